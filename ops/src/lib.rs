//! `pipeline-ops`: the operations behind the commands. Each takes a request, reports progress
//! through a callback and returns an outcome; the binary parses options and renders outcomes.
//! Nothing here prints, reads the command line or decides an exit code.

pub mod canary;
