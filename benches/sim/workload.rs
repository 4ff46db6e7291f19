//! The synthetic closure: a seeded DAG shaped like a NixOS system closure.
//!
//! Per system: a bootstrap chain (stdenv stages, one of them a gcc), then
//! layered libraries whose inputs are the stdenv plus a few earlier nodes,
//! skewed towards the early "core" ones (glibc, zlib, openssl get the most
//! dependents), then for aarch64 a few aggregates (system-path with a wide
//! fan-in, kernel modules, initrd, the toplevel). Build times are in
//! seconds on a speed-1 machine (one ARM board slot): log-normal (median
//! 8 s, sigma 1.4, capped at 30 min) plus named huge nodes (gcc, llvm,
//! rustc, the kernel, tens of minutes). Output sizes are log-normal
//! (median 1 MB) with hundreds of MB for the huge ones.
//!
//! x86_64-linux nodes stand for the build-platform part of the closure
//! (cross-built firmware and boot loader, image tools): they depend only
//! on x86_64 nodes, and the aarch64 aggregates depend on a few of them.

use super::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sys {
    X86,
    Arm,
}

impl Sys {
    pub fn nix(self) -> &'static str {
        match self {
            Sys::X86 => "x86_64-linux",
            Sys::Arm => "aarch64-linux",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Drv {
    pub name: String,
    pub sys: Sys,
    /// Seconds on a speed-1 machine.
    pub work: f64,
    /// Bytes of output (what a copy moves).
    pub out_size: f64,
    /// Inputs; always smaller ids (ids are a topological order).
    pub deps: Vec<usize>,
    pub big_parallel: bool,
}

pub struct Workload {
    pub drvs: Vec<Drv>,
    /// For each node, the nodes that depend on it.
    pub dependents: Vec<Vec<usize>>,
}

const MB: f64 = 1e6;
const LAYERS: usize = 6;

struct Gen<'a> {
    rng: &'a mut Rng,
    drvs: Vec<Drv>,
}

impl Gen<'_> {
    fn add(&mut self, name: String, sys: Sys, work: f64, size: f64, deps: Vec<usize>) -> usize {
        let mut deps = deps;
        deps.sort_unstable();
        deps.dedup();
        self.drvs.push(Drv {
            name,
            sys,
            work,
            out_size: size,
            deps,
            big_parallel: work >= 600.0,
        });
        self.drvs.len() - 1
    }

    fn small_work(&mut self) -> f64 {
        self.rng.lognormal(8.0, 1.4).clamp(0.5, 1800.0)
    }

    fn small_size(&mut self) -> f64 {
        self.rng.lognormal(MB, 1.5).clamp(1e3, 300.0 * MB)
    }

    /// An earlier library, skewed towards the first (most depended-on) ones.
    fn core_pick(&mut self, pool: &[usize]) -> usize {
        let u = self.rng.unit();
        pool[((u * u * u) * pool.len() as f64) as usize]
    }

    /// The bootstrap chain of one system; returns its last node (stdenv).
    fn bootstrap(&mut self, sys: Sys, len: usize) -> usize {
        let mut prev: Option<usize> = None;
        for i in 0..len {
            let (name, work, size) = if i == len / 2 {
                (format!("{}-gcc-stage", sys.nix()), 1200.0, 200.0 * MB)
            } else {
                let w = self.rng.lognormal(40.0, 0.7);
                let s = self.small_size();
                (format!("{}-bootstrap-{i}", sys.nix()), w, s)
            };
            prev = Some(self.add(name, sys, work, size, prev.into_iter().collect()));
        }
        prev.expect("a bootstrap chain has at least one node")
    }

    /// `count` libraries in layers; `huge` nodes are placed in given layers.
    fn libraries(&mut self, sys: Sys, stdenv: usize, count: usize) -> Vec<usize> {
        let mut pool: Vec<usize> = Vec::new();
        let mut huge: Vec<(usize, &str, f64, f64)> = match sys {
            Sys::Arm => vec![
                (1, "linux-kernel", 2400.0, 150.0 * MB),
                (2, "llvm", 2400.0, 400.0 * MB),
                (3, "rustc", 1800.0, 500.0 * MB),
            ],
            Sys::X86 => vec![(1, "gcc-cross-aarch64", 1500.0, 200.0 * MB)],
        };
        let mut prev_huge: Option<usize> = None;
        for layer in 0..LAYERS {
            let n = count / LAYERS + usize::from(layer < count % LAYERS);
            let before = pool.clone();
            for i in 0..n {
                let mut deps = vec![stdenv];
                if let Some(pos) = huge.iter().position(|h| h.0 == layer)
                    && i == 0
                {
                    let (_, name, work, size) = huge.remove(pos);
                    // llvm -> rustc: the huge ones form a chain, as in nixpkgs.
                    deps.extend(prev_huge.filter(|_| name == "rustc"));
                    for _ in 0..3.min(before.len()) {
                        deps.push(self.core_pick(&before));
                    }
                    let id = self.add(format!("{}-{name}", sys.nix()), sys, work, size, deps);
                    prev_huge = Some(id);
                    pool.push(id);
                    continue;
                }
                if !before.is_empty() {
                    let fan_in = 1 + self.rng.range(0, 4) + (self.rng.unit() < 0.05) as usize * 15;
                    for _ in 0..fan_in {
                        deps.push(self.core_pick(&before));
                    }
                }
                let (work, size) = (self.small_work(), self.small_size());
                let name = format!("{}-lib-{layer}-{i}", sys.nix());
                pool.push(self.add(name, sys, work, size, deps));
            }
        }
        pool
    }
}

/// `n` derivations, `x86_share` of them x86_64-linux.
pub fn generate(seed: u64, n: usize, x86_share: f64) -> Workload {
    let mut rng = Rng::new(seed);
    let mut g = Gen {
        rng: &mut rng,
        drvs: Vec::new(),
    };
    let n = n.max(60);
    let n_x86 = ((n as f64) * x86_share.clamp(0.0, 0.5)).round() as usize;
    let tops = 5;
    let n_arm = n - n_x86 - tops;
    let mut x86_libs = Vec::new();
    if n_x86 >= 10 {
        let chain = (n_x86 / 10).clamp(3, 20);
        let stdenv = g.bootstrap(Sys::X86, chain);
        x86_libs = g.libraries(Sys::X86, stdenv, n_x86 - chain);
    }
    let chain = (n_arm / 10).clamp(3, 20);
    let stdenv = g.bootstrap(Sys::Arm, chain);
    let libs = g.libraries(Sys::Arm, stdenv, n_arm - chain);
    aggregates(&mut g, &libs, &x86_libs);
    let drvs = g.drvs;
    let mut dependents = vec![Vec::new(); drvs.len()];
    for (i, d) in drvs.iter().enumerate() {
        for &dep in &d.deps {
            dependents[dep].push(i);
        }
    }
    Workload { drvs, dependents }
}

/// system-path, kernel modules, initrd, firmware, toplevel.
fn aggregates(g: &mut Gen<'_>, libs: &[usize], x86: &[usize]) {
    let kernel = (0..g.drvs.len())
        .find(|&i| g.drvs[i].name.ends_with("linux-kernel"))
        .expect("the closure has a kernel");
    let mut path_deps: Vec<usize> = (0..200).map(|_| libs[g.rng.range(0, libs.len())]).collect();
    path_deps.extend(libs.iter().rev().take(50));
    let path = g.add("system-path".into(), Sys::Arm, 20.0, 5.0 * MB, path_deps);
    let modules = g.add(
        "kernel-modules".into(),
        Sys::Arm,
        90.0,
        80.0 * MB,
        vec![kernel],
    );
    let initrd = g.add(
        "initrd".into(),
        Sys::Arm,
        60.0,
        30.0 * MB,
        vec![modules, path],
    );
    let mut fw: Vec<usize> = x86.iter().rev().take(3).copied().collect();
    fw.push(kernel);
    let firmware = g.add("firmware-image".into(), Sys::Arm, 30.0, 60.0 * MB, fw);
    g.add(
        "nixos-system-toplevel".into(),
        Sys::Arm,
        5.0,
        0.1 * MB,
        vec![path, kernel, initrd, firmware],
    );
}

impl Workload {
    /// Build seconds per system at speed 1.
    pub fn work_by_sys(&self, sys: Sys) -> f64 {
        self.drvs
            .iter()
            .filter(|d| d.sys == sys)
            .map(|d| d.work)
            .sum()
    }

    pub fn count(&self, sys: Sys) -> usize {
        self.drvs.iter().filter(|d| d.sys == sys).count()
    }
}
