# Test derivations for the fault scenarios (tests/lab/scenarios/faults.sh).
#   consume: its only input is a path already in the client's store (`input`,
#            e.g. a big file added with nix-store --add), so the client uploads
#            it and the builder must receive it before the build starts
#   noise:   `mib` MiB from /dev/urandom: an output no compressor shrinks
{ input ? null, seed ? "0", mib ? 100, bbDir ? ./bb }:
let
  bb = builtins.path { path = bbDir; name = "busybox-static"; };
  mk = name: script: attrs: derivation ({
    name = "lab-${name}";
    system = builtins.currentSystem;
    inherit seed;
    builder = "${bb}/bin/sh";
    args = [ "-e" "-c" script ];
  } // attrs);
in
{
  consume = mk "consume" "wc -c < $input > $out" { input = builtins.storePath input; };
  noise = mk "noise-${toString mib}m" "head -c $((mib << 20)) /dev/urandom > $out" { mib = toString mib; };
}
