//! A hook called after each commit (the S3 mirror's upload queue): the
//! entry's scope directory relative to the store root ("" for the public
//! scope, `private/<client dir>` otherwise) and its hash part. Set once.

use std::sync::{Arc, OnceLock};

use super::{Scope, Store};

/// Called with (scope directory relative to the root, hash part); must not
/// block (it runs on the committing task).
pub type OnCommit = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The store's hook slot (shared by its clones).
#[derive(Clone, Default)]
pub(super) struct Hook(Arc<OnceLock<OnCommit>>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Hook(set)"
        } else {
            "Hook(none)"
        })
    }
}

impl Store {
    /// Sets the commit hook; false if one was set already.
    pub fn set_on_commit(&self, f: OnCommit) -> bool {
        self.hook.0.set(f).is_ok()
    }

    /// `scope`'s directory relative to the root: "" or `private/<dir>`.
    pub fn scope_prefix(scope: &Scope) -> String {
        match scope {
            Scope::Public => String::new(),
            Scope::Private(c) => format!("private/{}", super::dir_name(c)),
        }
    }

    /// Tells the hook, if any, that `hash` was committed in `scope`.
    pub(super) fn committed(&self, scope: &Scope, hash: &str) {
        if let Some(f) = self.hook.0.get() {
            f(&Store::scope_prefix(scope), hash);
        }
    }
}
