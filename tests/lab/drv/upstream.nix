# A closure shaped like a real one, for the lab's stand-in of cache.nixos.org
# (tests/lab/upstream.sh builds it once and serves it as a signed binary
# cache on loopback): `count` paths in `layers` layers, each referencing 1–3
# paths of earlier layers (a deep graph: `top` reaches all of them); every
# 50th path is large (largeMiB), every 7th medium (mediumMiB), the rest
# small (16–215 KiB). The defaults give 300 paths, about 1.35 GiB of NARs.
# Contents are random bytes (incompressible, like most of a real closure).
{ count ? 300
, layers ? 12
, largeMiB ? 200
, mediumMiB ? 3
, bbDir ? ./bb
}:
let
  bb = builtins.path { path = bbDir; name = "busybox-static"; };
  perLayer = count / layers;
  layerOf = i: i / perLayer;
  # bytes of path i
  size = i:
    if i - (i / 50) * 50 == 0 then largeMiB * 1048576
    else if i - (i / 7) * 7 == 0 then mediumMiB * 1048576
    else (16 + (i * 37 - (i * 37 / 200) * 200)) * 1024;
  # 1–3 references into the layers below
  deps = i:
    let below = layerOf i * perLayer;
        pick = k: builtins.elemAt paths (k - (k / below) * below);
    in if below == 0 then [ ]
       else map pick (builtins.genList (j: i * 13 + j * 29 + 5) (1 + i - (i / 3) * 3));
  mkPath = i: derivation {
    name = "up-${toString (layerOf i)}-${toString i}";
    system = builtins.currentSystem;
    builder = "${bb}/bin/sh";
    bytes = toString (size i);
    refs = deps i;
    args = [ "-e" "-c" ''
      mkdir $out
      head -c $bytes /dev/urandom > $out/data
      for r in $refs; do echo $r >> $out/refs; done
      echo ok > $out/done
    '' ];
  };
  paths = builtins.genList mkPath count;
in {
  inherit paths;
  # depends on every path (directly or through the graph)
  top = derivation {
    name = "up-top";
    system = builtins.currentSystem;
    builder = "${bb}/bin/sh";
    refs = paths;
    args = [ "-e" "-c" ''mkdir $out; for r in $refs; do echo $r >> $out/refs; done'' ];
  };
}
