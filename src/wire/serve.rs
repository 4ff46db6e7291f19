//! Serve protocol (`nix-store --serve`).
