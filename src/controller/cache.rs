//! What reconciles read instead of the Kubernetes API.
//!
//! - The OAuthTokens, and the Secrets this operator owns (label-selected), come from watch
//!   caches. A token Secret is cached without its data: only a digest of it, enough to tell
//!   whether it must be written again.
//! - Every other Secret is watched as metadata only. The data of a Secret an OAuthToken
//!   references (client, import) is read once per resourceVersion, when a reconcile needs it.
//! - This process's own writes are kept until the watches deliver them, so a reconcile never
//!   acts on a cache that has not caught up with it yet (resourceVersions are compared as
//!   integers, which Kubernetes guarantees since 1.35 and every etcd-backed apiserver provides).
//! - An index of which OAuthTokens reference which Secret turns a Secret event into the
//!   OAuthTokens to look at, without a scan of all OAuthTokens.
//!
//! Without registered caches (unit tests with a mocked API) every read goes to the API.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::{OAuthToken, ROLE_TARGET, SECRET_ROLE_LABEL};

/// Annotation that exists only in this process's cache: the SHA-256 of a token Secret's data,
/// kept instead of the data itself.
pub const CACHED_DATA_DIGEST: &str = "oauth-token-operator.io/cached-data-sha256";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

type Key = (String, String);

/// The caches of one watched scope (all namespaces, or one).
#[derive(Clone)]
pub struct Scope {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub tokens: Store<OAuthToken>,
    pub owned: Store<Secret>,
    pub others: Store<PartialObjectMeta<Secret>>,
    pub index: Arc<SecretIndex>,
}

impl Scope {
    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }

    /// Waits until every watch of the scope has listed once; false if a watch ended first.
    pub async fn wait_ready(&self) -> bool {
        use crate::health::store_ready;
        store_ready(&self.tokens).await.is_ok()
            && store_ready(&self.owned).await.is_ok()
            && store_ready(&self.others).await.is_ok()
    }
}

/// Which OAuthTokens of a scope reference which Secrets (client and import Secrets).
#[derive(Default)]
pub struct SecretIndex {
    inner: Mutex<IndexMaps>,
}

#[derive(Default)]
struct IndexMaps {
    /// (namespace, Secret name) → OAuthToken names.
    readers: HashMap<Key, BTreeSet<String>>,
    /// (namespace, OAuthToken name) → the Secret names it references.
    references: HashMap<Key, Vec<String>>,
}

impl SecretIndex {
    /// Records what `token` references now, replacing what it referenced before.
    pub fn upsert(&self, token: &OAuthToken) {
        let namespace = token.namespace().unwrap_or_default();
        let name = token.name_any();
        let mut maps = lock(&self.inner);
        maps.remove((namespace.clone(), name.clone()));
        let referenced = referenced_secrets(token);
        for secret in &referenced {
            maps.readers
                .entry((namespace.clone(), secret.clone()))
                .or_default()
                .insert(name.clone());
        }
        maps.references.insert((namespace, name), referenced);
    }

    pub fn remove(&self, namespace: &str, name: &str) {
        lock(&self.inner).remove((namespace.to_string(), name.to_string()));
    }

    pub fn clear(&self) {
        *lock(&self.inner) = IndexMaps::default();
    }

    /// The OAuthTokens that reference the Secret `namespace/name`.
    pub fn readers(&self, namespace: &str, name: &str) -> Vec<ObjectRef<OAuthToken>> {
        lock(&self.inner)
            .readers
            .get(&(namespace.to_string(), name.to_string()))
            .map(|names| {
                names
                    .iter()
                    .map(|token| ObjectRef::new(token).within(namespace))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).references.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IndexMaps {
    fn remove(&mut self, token: Key) {
        let Some(secrets) = self.references.remove(&token) else {
            return;
        };
        let (namespace, name) = token;
        for secret in secrets {
            let key = (namespace.clone(), secret);
            if let Some(readers) = self.readers.get_mut(&key) {
                readers.remove(&name);
                if readers.is_empty() {
                    self.readers.remove(&key);
                }
            }
        }
    }
}

/// The names of the Secrets an OAuthToken reads (not the two it owns).
pub fn referenced_secrets(token: &OAuthToken) -> Vec<String> {
    let spec = &token.spec;
    let mut names: Vec<String> = spec
        .client_secret_ref
        .iter()
        .map(|r| r.name.clone())
        .chain(
            spec.grant
                .refresh_token
                .iter()
                .map(|g| g.initial_refresh_token_secret_ref.name.clone()),
        )
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The caches of every running scope, this process's writes the watches have not delivered
/// yet, and the data of referenced Secrets.
#[derive(Default)]
pub struct Caches {
    scopes: RwLock<Vec<Scope>>,
    written_secrets: Mutex<HashMap<Key, Secret>>,
    written_tokens: Mutex<HashMap<Key, OAuthToken>>,
    /// Data of Secrets users reference, with the resourceVersion it was read at.
    referenced_data: Mutex<HashMap<Key, Arc<Secret>>>,
}

impl Caches {
    pub fn register(&self, scope: Scope) {
        write(&self.scopes).push(scope);
    }

    /// Forgets every scope (the controllers stopped) and what was kept for them.
    pub fn clear(&self) {
        write(&self.scopes).clear();
        lock(&self.written_secrets).clear();
        lock(&self.written_tokens).clear();
        lock(&self.referenced_data).clear();
    }

    pub fn scope_for(&self, namespace: &str) -> Option<Scope> {
        read(&self.scopes)
            .iter()
            .find(|scope| scope.covers(namespace))
            .cloned()
    }

    /// The newest known version of `token`: from the cache or from this process's last write.
    /// Without caches, read from the API.
    pub async fn token(
        &self,
        api: &Api<OAuthToken>,
        token: &OAuthToken,
    ) -> Result<Option<OAuthToken>, kube::Error> {
        let namespace = token.namespace().unwrap_or_default();
        let name = token.name_any();
        let Some(scope) = self.scope_for(&namespace) else {
            return api.get_opt(&name).await;
        };
        let cached = scope
            .tokens
            .get(&ObjectRef::new(&name).within(&namespace))
            .map(|t| (*t).clone());
        Ok(newest(
            cached,
            &mut lock(&self.written_tokens),
            (namespace, name),
        ))
    }

    /// A Secret this operator owns (state or token Secret), newest version.
    pub async fn owned_secret(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Secret>, kube::Error> {
        let Some(scope) = self.scope_for(namespace) else {
            return api.get_opt(name).await;
        };
        let cached = scope
            .owned
            .get(&ObjectRef::new(name).within(namespace))
            .map(|s| (*s).clone());
        Ok(newest(
            cached,
            &mut lock(&self.written_secrets),
            (namespace.to_string(), name.to_string()),
        ))
    }

    /// The resourceVersion of a Secret the user owns: `Some(None)` when it does not exist,
    /// `None` when there is no cache to ask.
    pub fn user_secret_version(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        let scope = self.scope_for(namespace)?;
        Some(
            scope
                .others
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|meta| meta.resource_version()),
        )
    }

    /// A Secret the user owns, with its data: read from the API once per resourceVersion.
    pub async fn user_secret(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        let Some(version) = self.user_secret_version(namespace, name) else {
            return Ok(api.get_opt(name).await?.map(Arc::new));
        };
        let Some(version) = version else {
            lock(&self.referenced_data).remove(&key);
            return Ok(None);
        };
        if let Some(known) = lock(&self.referenced_data).get(&key)
            && !is_older(known.resource_version().as_deref(), &version)
        {
            return Ok(Some(known.clone()));
        }
        let fresh = api.get_opt(name).await?.map(|mut secret| {
            secret.metadata.managed_fields = None;
            Arc::new(secret)
        });
        let mut data = lock(&self.referenced_data);
        match &fresh {
            Some(secret) => data.insert(key, secret.clone()),
            None => data.remove(&key),
        };
        Ok(fresh)
    }

    /// Remembers a Secret this process just wrote, until the watch delivers it.
    pub fn wrote_secret(&self, secret: &Secret) {
        if self
            .scope_for(&secret.namespace().unwrap_or_default())
            .is_none()
        {
            return;
        }
        let mut secret = secret.clone();
        strip_owned_secret(&mut secret);
        lock(&self.written_secrets).insert(key_of(&secret), secret);
    }

    /// Remembers an OAuthToken as this process's status write returned it.
    pub fn wrote_token(&self, token: &OAuthToken) {
        if self
            .scope_for(&token.namespace().unwrap_or_default())
            .is_none()
        {
            return;
        }
        let mut token = token.clone();
        strip_token(&mut token);
        lock(&self.written_tokens).insert(key_of(&token), token);
    }

    /// Called for every owned Secret the watch delivers (`deleted`: a deletion). Returns
    /// whether it is this process's own write, which needs no reconcile: the reconcile that
    /// made it already knows.
    pub fn delivered_secret(&self, secret: &Secret, deleted: bool) -> bool {
        delivered(&mut lock(&self.written_secrets), secret, deleted)
    }

    /// Called for every OAuthToken the watch delivers.
    pub fn delivered_token(&self, token: &OAuthToken, deleted: bool) -> bool {
        delivered(&mut lock(&self.written_tokens), token, deleted)
    }

    /// Drops the data kept of a user's Secret that changed or was deleted.
    pub fn delivered_user_secret(&self, meta: &PartialObjectMeta<Secret>, deleted: bool) {
        let key = key_of(meta);
        let mut data = lock(&self.referenced_data);
        let stale = data
            .get(&key)
            .is_some_and(|known| deleted || known.resource_version() != meta.resource_version());
        if stale {
            data.remove(&key);
        }
    }

    /// How many of this process's writes the watches have not delivered yet (for tests).
    pub fn undelivered_writes(&self) -> usize {
        lock(&self.written_secrets).len() + lock(&self.written_tokens).len()
    }
}

fn key_of<K: Resource>(object: &K) -> Key {
    (
        object.meta().namespace.clone().unwrap_or_default(),
        object.meta().name.clone().unwrap_or_default(),
    )
}

/// The newer of the cached object and this process's last write of it; the write is forgotten
/// once the cache has caught up.
fn newest<K: Resource + Clone>(
    cached: Option<K>,
    written: &mut HashMap<Key, K>,
    key: Key,
) -> Option<K> {
    let Some(ours) = written.get(&key) else {
        return cached;
    };
    match &cached {
        Some(cached)
            if !is_older(
                cached.meta().resource_version.as_deref(),
                ours.meta().resource_version.as_deref().unwrap_or_default(),
            ) =>
        {
            written.remove(&key);
            Some(cached.clone())
        }
        _ => Some(ours.clone()),
    }
}

fn delivered<K: Resource>(written: &mut HashMap<Key, K>, object: &K, deleted: bool) -> bool {
    let key = key_of(object);
    let Some(ours) = written.get(&key) else {
        return false;
    };
    let version = object.meta().resource_version.as_deref();
    let ours_version = ours.meta().resource_version.as_deref().unwrap_or_default();
    let own = !deleted && version == Some(ours_version);
    if deleted || !is_older(version, ours_version) {
        written.remove(&key);
    }
    own
}

/// Whether `version` is older than `than`. Unparsable versions count as not older, so the
/// cache wins: that is the behaviour of a plain watch cache.
pub fn is_older(version: Option<&str>, than: &str) -> bool {
    match (
        version.and_then(|v| v.parse::<u64>().ok()),
        than.parse::<u64>(),
    ) {
        (Some(version), Ok(than)) => version < than,
        _ => false,
    }
}

/// What the OAuthToken cache keeps: no managedFields, no copy of the last applied manifest.
pub fn strip_token(token: &mut OAuthToken) {
    token.metadata.managed_fields = None;
    if let Some(annotations) = token.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// What the owned-Secret cache keeps: no managedFields, and for a token Secret a digest of its
/// data instead of the data (the state Secret is the source of the values).
pub fn strip_owned_secret(secret: &mut Secret) {
    secret.metadata.managed_fields = None;
    let is_token_secret =
        secret.labels().get(SECRET_ROLE_LABEL).map(String::as_str) == Some(ROLE_TARGET);
    if is_token_secret && let Some(data) = secret.data.take() {
        secret
            .annotations_mut()
            .insert(CACHED_DATA_DIGEST.to_string(), data_digest(&data));
    }
}

/// What the cache of other Secrets keeps: identity and version.
pub fn strip_other_secret(meta: &mut PartialObjectMeta<Secret>) {
    let kept = kube::core::ObjectMeta {
        name: meta.metadata.name.take(),
        namespace: meta.metadata.namespace.take(),
        resource_version: meta.metadata.resource_version.take(),
        uid: meta.metadata.uid.take(),
        ..Default::default()
    };
    meta.metadata = kept;
}

/// SHA-256 over a Secret's data, keys and values length-prefixed.
pub fn data_digest(data: &BTreeMap<String, k8s_openapi::ByteString>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.0.len() as u64).to_be_bytes());
        hasher.update(&value.0);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digest of what a token Secret holds, cached or not.
pub fn published_digest(secret: &Secret) -> Option<String> {
    match &secret.data {
        Some(data) => Some(data_digest(data)),
        None => secret.annotations().get(CACHED_DATA_DIGEST).cloned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::core::ObjectMeta;

    fn secret(name: &str, version: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        }
    }

    #[test]
    fn versions_compare_as_integers_and_unknown_ones_defer_to_the_cache() {
        assert!(is_older(Some("9"), "10"));
        assert!(!is_older(Some("10"), "10"));
        assert!(!is_older(Some("11"), "10"));
        assert!(!is_older(Some("abc"), "10"));
        assert!(!is_older(None, "10"));
    }

    #[test]
    fn our_write_wins_until_the_cache_catches_up() {
        let mut written = HashMap::new();
        let key = ("shop".to_string(), "s".to_string());
        written.insert(key.clone(), secret("s", "12"));
        let seen = newest(Some(secret("s", "11")), &mut written, key.clone());
        assert_eq!(seen.unwrap().resource_version().as_deref(), Some("12"));
        // Not in the cache at all yet (just created).
        let seen = newest(None, &mut written, key.clone());
        assert_eq!(seen.unwrap().resource_version().as_deref(), Some("12"));
        // Someone else wrote after us: theirs is newer.
        let seen = newest(Some(secret("s", "13")), &mut written, key.clone());
        assert_eq!(seen.unwrap().resource_version().as_deref(), Some("13"));
        assert!(written.is_empty(), "caught up: our copy is dropped");
    }

    #[test]
    fn delivered_own_writes_are_recognised_and_forgotten() {
        let mut written = HashMap::new();
        let key = ("shop".to_string(), "s".to_string());
        written.insert(key.clone(), secret("s", "12"));
        assert!(
            !delivered(&mut written, &secret("s", "11"), false),
            "an older event"
        );
        assert_eq!(written.len(), 1);
        assert!(
            delivered(&mut written, &secret("s", "12"), false),
            "our own write"
        );
        assert!(written.is_empty());
        written.insert(key, secret("s", "12"));
        assert!(
            !delivered(&mut written, &secret("s", "12"), true),
            "deleted"
        );
        assert!(written.is_empty());
    }

    #[test]
    fn token_secrets_are_cached_as_a_digest() {
        let data = BTreeMap::from([("access_token".to_string(), ByteString(b"at-1".to_vec()))]);
        let mut token_secret = secret("t", "1");
        token_secret.metadata.labels = Some(BTreeMap::from([(
            SECRET_ROLE_LABEL.to_string(),
            ROLE_TARGET.to_string(),
        )]));
        token_secret.data = Some(data.clone());
        let before = published_digest(&token_secret);
        strip_owned_secret(&mut token_secret);
        assert!(token_secret.data.is_none());
        assert_eq!(published_digest(&token_secret), before);
        assert_eq!(before, Some(data_digest(&data)));

        let mut state = secret("t-oauth-state", "1");
        state.data = Some(data.clone());
        strip_owned_secret(&mut state);
        assert_eq!(state.data, Some(data), "the state Secret keeps its data");
    }

    #[test]
    fn the_index_follows_spec_changes() {
        let token = |import: &str| -> OAuthToken {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
                "metadata": {"name": "a", "namespace": "shop"},
                "spec": {
                    "tokenEndpoint": "https://idp.test/token",
                    "clientSecretRef": {"name": "client"},
                    "grant": {"refreshToken": {"initialRefreshTokenSecretRef": {"name": import}}},
                },
            }))
            .unwrap()
        };
        let index = SecretIndex::default();
        index.upsert(&token("import-1"));
        assert_eq!(index.readers("shop", "client").len(), 1);
        assert_eq!(index.readers("shop", "import-1").len(), 1);
        index.upsert(&token("import-2"));
        assert!(index.readers("shop", "import-1").is_empty());
        assert_eq!(index.readers("shop", "import-2").len(), 1);
        assert!(index.readers("other", "client").is_empty());
        index.remove("shop", "a");
        assert!(index.readers("shop", "client").is_empty());
        assert!(index.is_empty());
    }
}
