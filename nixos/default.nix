# Entry point for users with nixpkgs (no flakes needed):
#   nix-build nixos -A package
#   nix-build nixos -A tests.vm                       # the NixOS VM test (KVM)
#   imports = [ (import ./nixos { }).nixosModules.relay ];   # or ./nixos/module.nix
# nixos/flake.nix offers the same as flake outputs.
{ pkgs ? import <nixpkgs> { } }:
{
  package = pkgs.callPackage ./package.nix { };

  # Plain module files: they take pkgs from the NixOS configuration that
  # imports them, not from the `pkgs` argument above.
  nixosModules = {
    relay = ./module.nix;     # services.nix-relay
    builder = ./builder.nix;  # services.nix-relay-builder
    client = ./client.nix;    # services.nix-relay-client
  };

  tests.vm = import ./tests/vm.nix { inherit pkgs; };
}
