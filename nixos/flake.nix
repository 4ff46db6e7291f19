# Flake interface to the NixOS packaging (the same outputs as default.nix):
#   nix build ./nixos                             # packages.<system>.default
#   nix build ./nixos#checks.x86_64-linux.vm      # the NixOS VM test (KVM)
#   inputs.nix-relay.url = "git+https://…/nix-relay?dir=nixos";
#   modules = [ nix-relay.nixosModules.relay ];   # or .builder / .client
# Nix finds the enclosing git checkout, so ../ (the Rust sources) is part of
# this flake's source. No flake.lock is committed: the first use pins nixpkgs.
{
  description = "nix-relay: one SSH endpoint for Nix remote builds, with a signed binary cache";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        nix-relay = pkgs.callPackage ./package.nix { };
        default = nix-relay;
      });

      nixosModules = {
        relay = ./module.nix;
        builder = ./builder.nix;
        client = ./client.nix;
        default = ./module.nix;
      };

      checks = forAll (pkgs: {
        vm = import ./tests/vm.nix { inherit pkgs; };
      });
    };
}
