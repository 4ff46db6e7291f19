//! Hooks called after each commit (the S3 mirror's upload queue) and on
//! each use of an entry (the bucket's last-use refresh): the entry's scope
//! directory relative to the store root ("" for the public scope,
//! `private/<client dir>` otherwise) and its hash part. Each set once.

use std::sync::{Arc, OnceLock};

use super::{Scope, Store};

/// Called with (scope directory relative to the root, hash part); must not
/// block (it runs on the committing task).
pub type OnCommit = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Called with (scope directory relative to the root, hash part) when an
/// entry is used (its NAR read, its narinfo served); must not block.
pub type OnUse = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The store's hook slots (shared by its clones).
#[derive(Clone, Default)]
pub(super) struct Hook(Arc<OnceLock<OnCommit>>, Arc<OnceLock<OnUse>>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (commit, used) = (self.0.get().is_some(), self.1.get().is_some());
        write!(f, "Hook(commit: {commit}, use: {used})")
    }
}

impl Store {
    /// Sets the commit hook; false if one was set already.
    pub fn set_on_commit(&self, f: OnCommit) -> bool {
        self.hook.0.set(f).is_ok()
    }

    /// Sets the use hook; false if one was set already.
    pub fn set_on_use(&self, f: OnUse) -> bool {
        self.hook.1.set(f).is_ok()
    }

    /// Tells the use hook, if any, that the entry `hash` in `scope_dir`
    /// (absolute, under the root) was used.
    pub(super) fn used(&self, scope_dir: &std::path::Path, hash: &str) {
        let Some(f) = self.hook.1.get() else { return };
        if let Some(rel) = (scope_dir.strip_prefix(&self.root).ok()).and_then(|p| p.to_str()) {
            f(rel, hash);
        }
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
