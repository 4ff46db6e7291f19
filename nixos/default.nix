# Entry point for users with nixpkgs: `nix-build nixos -A package`.
{ pkgs ? import <nixpkgs> { } }:
{
  package = pkgs.callPackage ./package.nix { };
}
