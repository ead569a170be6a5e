//! The SSH transport (system OpenSSH).
