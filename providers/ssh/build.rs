// The ansible files are embedded with include_dir!, which cannot tell cargo to watch a directory
// on stable: a role or playbook added under ansible/ must still rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=ansible");
}
