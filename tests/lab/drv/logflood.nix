# A builder that floods its log (scenario log_flood, tests/lab/scenarios/logflood.sh):
#   flood: `mib` MiB of 'x' on stderr without a newline, then one newline,
#          then a successful output. Stock Nix sends such a line whole when
#          it ends, so the relay gets it as one line of `mib` MiB.
{ seed ? "0", mib ? 1024, bbDir ? ./bb }:
let
  bb = builtins.path { path = bbDir; name = "busybox-static"; };
in
{
  flood = derivation {
    name = "lab-logflood-${toString mib}m";
    system = builtins.currentSystem;
    inherit seed;
    mib = toString mib;
    builder = "${bb}/bin/sh";
    args = [ "-e" "-c" ''
      head -c $((mib << 20)) /dev/zero | tr '\0' x >&2
      echo >&2
      echo flooded > $out
    '' ];
  };
}
