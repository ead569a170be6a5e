//! One shared wait: poll a condition until it holds. The condition has no timeout of its own
//! (as kube-rs `runtime::wait`): the caller's `Step` bounds it by its cancel and its deadline,
//! so a health wait today and a cloud waiter later stop the same way, with the same message.

use crate::provider::ProviderError;
use crate::step::Step;
use std::future::Future;
use std::time::Duration;

/// What one look at a condition found.
#[derive(Debug, Clone, PartialEq)]
pub enum Check<T> {
    /// It holds; the wait is over with this value.
    Done(T),
    /// Not yet, and why (the last reason is in the error if the step stops first).
    NotYet(String),
}

/// Poll `condition` every `every` until it is `Done`, fails (the error is returned as it is),
/// or `step` is cancelled or past its deadline (the step's error, with the last reason).
pub async fn until<T, F, Fut>(
    step: &Step,
    every: Duration,
    mut condition: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>, ProviderError>>,
{
    loop {
        step.check()?;
        let why = match condition().await? {
            Check::Done(v) => return Ok(v),
            Check::NotYet(why) => why,
        };
        if let Err(e) = step.sleep(every).await {
            return Err(with_last(e, &why));
        }
    }
}

/// `until` for provider code on a blocking thread (`spawn_blocking`); the step's cancel is
/// looked at between polls and at least every 50 ms while sleeping.
pub fn until_blocking<T>(
    step: &Step,
    every: Duration,
    mut condition: impl FnMut() -> Result<Check<T>, ProviderError>,
) -> Result<T, ProviderError> {
    loop {
        step.check()?;
        let why = match condition()? {
            Check::Done(v) => return Ok(v),
            Check::NotYet(why) => why,
        };
        if let Err(e) = step.sleep_blocking(every) {
            return Err(with_last(e, &why));
        }
    }
}

fn with_last(mut e: ProviderError, why: &str) -> ProviderError {
    if !why.is_empty() {
        e.message = format!("{}; last: {why}", e.message);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::Op;
    use std::time::Instant;

    #[tokio::test]
    async fn a_condition_that_comes_true_ends_the_wait_with_its_value() {
        let step = Step::detached("thing.a");
        let mut n = 0;
        let v = until(&step, Duration::from_millis(1), || {
            n += 1;
            let r = if n == 3 {
                Check::Done(n)
            } else {
                Check::NotYet(format!("look {n}"))
            };
            async move { Ok(r) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn the_steps_deadline_ends_a_wait_that_never_comes_true() {
        let step = Step::detached("thing.a").bounded(Op::Create, Some(Duration::from_millis(50)));
        let t = Instant::now();
        let e = until(&step, Duration::from_secs(10), || async {
            Ok(Check::<()>::NotYet("connection refused".into()))
        })
        .await
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(
            e.message,
            "thing.a: create did not finish within 50ms (timeouts.create); last: connection refused"
        );
    }

    #[test]
    fn a_cancel_ends_a_blocking_wait_and_an_error_ends_it_as_it_is() {
        let step = Step::detached("thing.a");
        let cancel = step.cancel.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            cancel.cancel();
        });
        let e = until_blocking(&step, Duration::from_secs(10), || {
            Ok(Check::<()>::NotYet(String::new()))
        })
        .unwrap_err();
        h.join().unwrap();
        assert_eq!(e.message, "thing.a: interrupted");
        let step = Step::detached("thing.b");
        let e = until_blocking(&step, Duration::from_millis(1), || {
            Err::<Check<()>, _>(ProviderError::new("the app exited"))
        })
        .unwrap_err();
        assert_eq!(e.message, "the app exited");
    }
}
