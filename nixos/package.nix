# nix-relay as a Nix package: `pkgs.callPackage ./package.nix { }`.
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "nix-relay";
  version = "0.1.0";
  # Only what cargo builds: no VCS metadata (.git is a directory in a clone
  # and a file in a worktree; with it, every commit would change the source
  # hash), no build or state directories, no packaging.
  src = lib.cleanSourceWith {
    src = ../.;
    filter = path: type:
      let base = baseNameOf path; in
      !(builtins.elem base [ ".git" ".jj" "result" "target" "nix-relay-state" "fuzz" "nixos" ".ci" ])
      && lib.cleanSourceFilter path type;
  };
  cargoLock.lockFile = ../Cargo.lock;
  # The test suite needs root, mount namespaces and OpenSSH (tests/run.sh);
  # it does not run inside the Nix sandbox.
  doCheck = false;
  meta = {
    description = "One SSH endpoint for Nix remote builds";
    mainProgram = "nix-relay";
    license = with lib.licenses; [ mit asl20 ];
    platforms = lib.platforms.linux;
  };
}
