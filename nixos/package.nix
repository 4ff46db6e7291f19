# nix-relay as a Nix package: `pkgs.callPackage ./package.nix { }`.
{ lib, rustPlatform }:

rustPlatform.buildRustPackage {
  pname = "nix-relay";
  version = "0.1.0";
  src = lib.cleanSourceWith {
    src = ../.;
    filter = path: type:
      let base = baseNameOf path; in
      !(builtins.elem base [ "target" "nix-relay-state" "fuzz" "nixos" ".ci" ]);
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
