# Test derivations for the nix-relay end-to-end lab (adapted from the shared
# remote-builder lab). No nixpkgs, no network.
# The only tool is a static busybox (./bb/bin/{busybox,sh}; NOT committed:
# tests/setup.sh copies it from Debian's busybox-static /bin/busybox);
# busybox's sh runs its applets without PATH.
#
#   nix-build drv -A top --argstr seed "$RANDOM"      # 10 leaves + 1 top (a DAG)
#   nix-build drv -A big --arg bigMiB 200             # one 200 MiB file of seeded random-ish bytes
#   attributes: leaves top big many multi multi4 noisy slow marked fail feature foreign consumer consumerPart smoke
#
# `seed` is mixed into every derivation: pass a fresh one to get fresh store
# paths (nothing already built / already copied).
{ seed ? "0"
, nLeaves ? 10
, bigMiB ? 200          # size of `big` in MiB (even numbers are exact)
, sleepSecs ? 5         # duration of `slow` and `marked`
, multiMiB ? 4          # size of each of `multi4`'s outputs
, noisyLines ? 20000    # log lines printed by `noisy`
, bbDir ? ./bb
, bbArmDir ? ./bb-arm64   # tests/lab/aarch64.sh
}:
let
  bb = builtins.path { path = bbDir; name = "busybox-static"; };

  bbArm = builtins.path { path = bbArmDir; name = "busybox-static-arm64"; };

  mk = { name, script, system ? builtins.currentSystem, builder ? "${bb}/bin/sh", ... }@attrs:
    derivation ((removeAttrs attrs [ "script" ]) // {
      inherit system seed builder;
      name = "lab-${name}";
      args = [ "-e" "-c" script ];
    });

  leaf = i: mk {
    name = "leaf-${toString i}";
    script = ''echo "leaf ${toString i} seed=$seed" > $out'';
  };

  leaves = builtins.genList leaf nLeaves;

in rec {
  inherit bb leaves;

  # DAG: top depends on all leaves; its output references them (runtime closure).
  top = mk {
    name = "top";
    deps = leaves;
    script = ''
      mkdir $out
      for d in $deps; do cat $d >> $out/all; echo $d >> $out/refs; done
      echo "top seed=$seed" > $out/info
    '';
  };

  # One big regular file: a 256 KiB block from a seeded awk PRNG, rotated
  # into 2 MiB, rotated again bigMiB/2 times. Deterministic for a given seed;
  # not compressible by gzip/zlib-sized windows.
  big = mk {
    name = "big-${toString bigMiB}m";
    mib = toString bigMiB;
    script = ''
      cd $TMPDIR
      awk -v seed="$seed" 'function r(){return int(rand()*256)} BEGIN{srand(seed+0); for(i=0;i<16384;i++) printf "%c%c%c%c%c%c%c%c%c%c%c%c%c%c%c%c", r(),r(),r(),r(),r(),r(),r(),r(),r(),r(),r(),r(),r(),r(),r(),r()}' > base
      n=$(wc -c < base)
      : > l1
      for k in 0 1 2 3 4 5 6 7; do o=$(( (k*40009) % n )); tail -c +$((o+1)) base >> l1; head -c $o base >> l1; done
      m=$(wc -c < l1)
      k=0
      while [ $k -lt $((mib/2)) ]; do o=$(( (k*1000003) % m )); tail -c +$((o+1)) l1; head -c $o l1; k=$((k+1)); done > $out
    '';
  };

  # A directory exercising every NAR feature: nested dirs, many files,
  # an executable, an empty file, a symlink, odd names.
  many = mk {
    name = "many";
    script = ''
      mkdir -p $out/a/b/c $out/bin $out/empty-dir
      i=0
      while [ $i -lt 300 ]; do echo "file $i seed=$seed" > $out/a/f$i; i=$((i+1)); done
      echo deep > $out/a/b/c/deep.txt
      printf '#!/bin/sh\necho hi\n' > $out/bin/run; chmod +x $out/bin/run
      : > $out/empty-file
      ln -s a/b/c/deep.txt $out/link
      echo odd > "$out/name with spaces & ünïcode"
    '';
  };

  # Two outputs.
  multi = mk {
    name = "multi";
    outputs = [ "out" "dev" ];
    script = ''echo out > $out; mkdir $dev; echo dev > $dev/d'';
  };

  # Lots of build log on stderr/stdout (log streaming through the proxy).
  noisy = mk {
    name = "noisy";
    lines = toString noisyLines;
    script = ''
      i=0
      while [ $i -lt $lines ]; do echo "noisy log line $i of $lines"; i=$((i+1)); done
      echo ok > $out
    '';
  };

  # Takes sleepSecs seconds, one log line per second.
  slow = mk {
    name = "slow-${toString sleepSecs}s";
    secs = toString sleepSecs;
    script = ''
      i=0
      while [ $i -lt $secs ]; do echo "slow: $i/$secs"; sleep 1; i=$((i+1)); done
      echo done > $out
    '';
  };

  # Always fails (exit 3) after printing to stderr.
  fail = mk {
    name = "fail";
    script = ''echo "lab-fail: about to fail on purpose" >&2; exit 3'';
  };

  # Needs a builder that advertises the big-parallel system feature.
  feature = mk {
    name = "feature";
    requiredSystemFeatures = [ "big-parallel" ];
    script = ''echo "built with big-parallel" > $out'';
  };

  # Foreign system: must never build on the x86_64 client, only be routed.
  # Real arm64 code: Debian's arm64 busybox (tests/lab/aarch64.sh), run by
  # qemu-user through binfmt_misc on the aarch64-linux backend.
  foreign = mk {
    name = "foreign";
    system = "aarch64-linux";
    builder = "${bbArm}/bin/sh";
    script = ''echo "machine=$(uname -m)" > $out'';
  };

  # Needs the generated upstream closure (drv/upstream.nix, ~1.35 GiB),
  # which tests/lab/upstream.sh serves as the lab's cache.nixos.org: what a
  # real derivation's inputs look like.
  consumer = mk {
    name = "consumer";
    deps = [ (import ./upstream.nix { inherit bbDir; }).top ];
    script = ''mkdir $out; for d in $deps; do wc -l < $d/refs > $out/inputs; done'';
  };

  # Depends on one path of the upstream closure: 33 paths, ~212 MiB, one of
  # them large (tests/lab/scenarios/substitute.sh).
  consumerPart = mk {
    name = "consumer-part";
    deps = [ (builtins.elemAt (import ./upstream.nix { inherit bbDir; }).paths 236) ];
    script = ''mkdir $out; for d in $deps; do cat $d/done > $out/ok; wc -l < $d/refs > $out/inputs; done'';
  };

  # Four outputs of multiMiB MiB each (the lab's matrix: all valid on the client after).
  multi4 = mk {
    name = "multi4";
    outputs = [ "out" "dev" "lib" "doc" ];
    mib = toString multiMiB;
    script = ''
      for o in $out $dev $lib $doc; do mkdir $o; dd if=/dev/urandom of=$o/blob bs=1048576 count=$mib 2>/dev/null; done
    '';
  };

  # Like slow, but its builder's command line names the seed, so the lab can
  # find (and kill, or wait for the end of) this very build's process.
  marked = mk {
    name = "marked-${toString sleepSecs}s";
    secs = toString sleepSecs;
    script = ''
      # lab-marked seed=${seed}
      i=0
      while [ $i -lt $secs ]; do echo "marked: $i/$secs"; sleep 1; i=$((i+1)); done
      echo done > $out
    '';
  };

  smoke = [ top many multi ];
}
