//! Shared by the property-test binaries: a runtime to drive the async
//! readers over byte slices, small limits, and the proptest configuration.

use std::cell::RefCell;
use std::future::Future;

use nix_relay::wire::Limits;
use nix_relay::wire::store_path::StorePath;
use proptest::collection::vec;
use proptest::prelude::*;

thread_local! {
    static RT: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread().build().unwrap(),
    );
}

/// The readers run over `&[u8]`, which never blocks.
pub fn block_on<F: Future>(f: F) -> F::Output {
    RT.with(|rt| rt.borrow().block_on(f))
}

pub const SMALL: Limits = Limits {
    max_string_bytes: 4096,
    max_collection_len: 64,
    max_nar_bytes: 1 << 20,
};

/// No regression files: this crate's tests only create the files they own.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Store paths that pass `StorePath::parse`.
pub fn store_path() -> impl Strategy<Value = StorePath> {
    ("[0-9a-df-np-sv-z]{32}", "[a-z0-9+_-][a-z0-9+._-]{0,39}")
        .prop_map(|(h, n)| StorePath::parse(&format!("/nix/store/{h}-{n}")).unwrap())
}

pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}
