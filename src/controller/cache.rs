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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::cached_token::CachedToken;
use crate::api::{
    MANAGED_BY_LABEL, OAuthToken, OWNER_LABEL, REFRESH_ANNOTATION, ROLE_TARGET, SECRET_ROLE_LABEL,
};

/// Annotation that exists only in this process's cache: the SHA-256 of a token Secret's data,
/// kept instead of the data itself.
pub const CACHED_DATA_DIGEST: &str = "oauth-token-operator.io/cached-data-sha256";

type Key = (String, String);

/// The caches of one watched scope (all namespaces, or one).
#[derive(Clone)]
pub struct Scope {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub tokens: Store<CachedToken>,
    pub owned: Arc<OwnedSecrets>,
    pub others: Arc<UserSecrets>,
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
            && self.owned.wait_ready().await
            && self.others.wait_ready().await
    }
}

/// Which OAuthTokens of a scope reference which Secrets (client and import Secrets).
#[derive(Default)]
pub struct SecretIndex {
    inner: Mutex<IndexMaps>,
    /// Built while the OAuthToken watch lists again; replaces `inner` when the list is
    /// complete, so that lookups meanwhile still find every reader.
    relist: Mutex<Option<IndexMaps>>,
}

#[derive(Default)]
struct IndexMaps {
    /// (namespace, Secret name) → OAuthToken names (a few at most: a Vec is smallest).
    readers: HashMap<Key, Vec<String>>,
    /// (namespace, OAuthToken name) → the Secret names it references.
    references: HashMap<Key, Vec<String>>,
}

impl SecretIndex {
    pub fn begin_relist(&self) {
        *lock(&self.relist) = Some(IndexMaps::default());
    }

    pub fn end_relist(&self) {
        if let Some(relisted) = lock(&self.relist).take() {
            *lock(&self.inner) = relisted;
        }
    }

    /// Records what `token` references now, replacing what it referenced before (into the
    /// index being relisted, when a relist is under way).
    pub fn upsert(&self, token: &OAuthToken) {
        let mut relist = lock(&self.relist);
        match relist.as_mut() {
            Some(maps) => maps.upsert(token),
            None => lock(&self.inner).upsert(token),
        }
    }

    pub fn remove(&self, namespace: &str, name: &str) {
        lock(&self.inner).remove((namespace.to_string(), name.to_string()));
    }

    pub fn clear(&self) {
        *lock(&self.inner) = IndexMaps::default();
    }

    /// The OAuthTokens that reference the Secret `namespace/name`.
    pub fn readers(&self, namespace: &str, name: &str) -> Vec<ObjectRef<CachedToken>> {
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
    fn upsert(&mut self, token: &OAuthToken) {
        let namespace = token.namespace().unwrap_or_default();
        let name = token.name_any();
        self.remove((namespace.clone(), name.clone()));
        let referenced = referenced_secrets(token);
        for secret in &referenced {
            let readers = self
                .readers
                .entry((namespace.clone(), secret.clone()))
                .or_default();
            if !readers.contains(&name) {
                readers.push(name.clone());
            }
        }
        self.references.insert((namespace, name), referenced);
    }

    fn remove(&mut self, token: Key) {
        let Some(secrets) = self.references.remove(&token) else {
            return;
        };
        let (namespace, name) = token;
        for secret in secrets {
            let key = (namespace.clone(), secret);
            if let Some(readers) = self.readers.get_mut(&key) {
                readers.retain(|reader| *reader != name);
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
    written_secrets: Mutex<Overlay<Secret>>,
    written_tokens: Mutex<Overlay<OAuthToken>>,
    /// Data of Secrets users reference, with the resourceVersion it was read at.
    referenced_data: Mutex<HashMap<Key, Arc<Secret>>>,
}

impl Caches {
    pub fn register(&self, scope: Scope) {
        write(&self.scopes).push(scope);
    }

    /// Forgets every scope (the controllers stopped) and what was kept for them.
    pub fn clear(&self) {
        for scope in write(&self.scopes).drain(..) {
            scope.owned.abandon();
            scope.others.abandon();
        }
        *lock(&self.written_secrets) = Overlay::default();
        *lock(&self.written_tokens) = Overlay::default();
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
        namespace: &str,
        name: &str,
    ) -> Result<Option<OAuthToken>, kube::Error> {
        let Some(scope) = self.scope_for(namespace) else {
            return api.get_opt(name).await;
        };
        let cached = match scope.tokens.get(&ObjectRef::new(name).within(namespace)) {
            Some(entry) => match entry.token() {
                Some(token) => Some(token),
                None => return api.get_opt(name).await,
            },
            None => None,
        };
        Ok(lock(&self.written_tokens).newest(
            cached,
            (namespace.to_string(), name.to_string()),
            Instant::now(),
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
            .get(namespace, name)
            .map(|entry| entry.to_secret(namespace, name));
        let newest = lock(&self.written_secrets).newest(
            cached,
            (namespace.to_string(), name.to_string()),
            Instant::now(),
        );
        if newest.is_none() && scope.others.get(namespace, name).is_some() {
            // A Secret of that name exists without our label: someone else's (then the
            // reconcile refuses to touch it), or ours with the label removed. Read it whole.
            return api.get_opt(name).await;
        }
        Ok(newest)
    }

    /// The resourceVersion of a Secret the user owns: `Some(None)` when it does not exist,
    /// `None` when there is no cache to ask.
    pub fn user_secret_version(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        let scope = self.scope_for(namespace)?;
        let other = scope
            .others
            .get(namespace, name)
            .and_then(|version| version.map(String::from));
        // A Secret that carries this operator's label (another OAuthToken's token Secret, say)
        // is in the owned cache instead.
        Some(other.or_else(|| {
            scope
                .owned
                .get(namespace, name)
                .and_then(|owned| owned.resource_version.as_deref().map(str::to_string))
        }))
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

    /// A Secret the user owns, read from the API without keeping it (an import Secret: its
    /// version is recorded in the state, so it is read again only when it changes). `None`
    /// without a read when the cache knows it does not exist.
    pub async fn user_secret_once(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Secret>, kube::Error> {
        if self.user_secret_version(namespace, name) == Some(None) {
            return Ok(None);
        }
        api.get_opt(name).await
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
        lock(&self.written_secrets).insert(secret, Instant::now());
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
        lock(&self.written_tokens).insert(token, Instant::now());
    }

    /// Called for every owned Secret the watch delivers. Returns
    /// whether it is this process's own write, which needs no reconcile: the reconcile that
    /// made it already knows.
    pub fn delivered_secret(&self, secret: &Secret, how: Delivery) -> bool {
        lock(&self.written_secrets).delivered(secret, how)
    }

    /// Called for every OAuthToken the watch delivers.
    pub fn delivered_token(&self, token: &OAuthToken, how: Delivery) -> bool {
        lock(&self.written_tokens).delivered(token, how)
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

/// How long this process's own write is trusted over the cache. A watch delivers within
/// milliseconds; a write still undelivered after this long was deleted or superseded while the
/// watch was away, and the cache is the better source (every state write is compare-and-swap, so
/// a stale read costs a retry, never the chain).
const OVERLAY_TTL: Duration = Duration::from_secs(30);

/// How a watch delivered an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Part of a (re)list: the visible cache still holds the old version until the list is
    /// complete, so our write stays in front of it.
    Listed,
    Changed,
    Deleted,
}

/// This process's writes that the watch has not delivered yet. Usually a handful; thousands
/// only while a cold start writes faster than the watch delivers. Entries are boxed and the
/// table shrinks when it empties, so that such a burst does not leave a table of thousands
/// of object-sized slots behind (10,000 OAuthTokens: about 10 MiB).
struct Overlay<K> {
    entries: HashMap<Key, Box<(K, Instant)>>,
    swept: Option<Instant>,
}

impl<K> Default for Overlay<K> {
    fn default() -> Self {
        Overlay {
            entries: HashMap::new(),
            swept: None,
        }
    }
}

fn version_of<K: Resource>(object: &K) -> Option<&str> {
    object.meta().resource_version.as_deref()
}

impl<K: Resource + Clone> Overlay<K> {
    fn insert(&mut self, object: K, now: Instant) {
        // Entries whose object is never read again (a deleted OAuthToken) go with the sweep.
        if self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) > OVERLAY_TTL)
        {
            self.entries
                .retain(|_, entry| now.saturating_duration_since(entry.1) <= OVERLAY_TTL);
            self.shrink_if_sparse();
            self.swept = Some(now);
        }
        self.entries
            .insert(key_of(&object), Box::new((object, now)));
    }

    fn forget(&mut self, key: &Key) {
        self.entries.remove(key);
        self.shrink_if_sparse();
    }

    fn shrink_if_sparse(&mut self) {
        if self.entries.capacity() > 64 && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }

    /// The newer of the cached object and our write of it; our write is forgotten once the
    /// cache has caught up or it is too old to trust.
    fn newest(&mut self, cached: Option<K>, key: Key, now: Instant) -> Option<K> {
        let Some((ours, at)) = self.entries.get(&key).map(|entry| &**entry) else {
            return cached;
        };
        let expired = now.saturating_duration_since(*at) > OVERLAY_TTL;
        let caught_up = cached.as_ref().is_some_and(|cached| {
            !is_older(version_of(cached), version_of(ours).unwrap_or_default())
        });
        if expired || caught_up {
            self.forget(&key);
            return cached;
        }
        Some(ours.clone())
    }

    /// Whether `object`, as the watch delivered it, is our own write (which needs no
    /// reconcile). Our copy is dropped once the delivered version is as new as ours.
    fn delivered(&mut self, object: &K, how: Delivery) -> bool {
        let key = key_of(object);
        let Some((ours, _)) = self.entries.get(&key).map(|entry| &**entry) else {
            return false;
        };
        let version = version_of(object);
        let ours_version = version_of(ours).unwrap_or_default();
        let own = how != Delivery::Deleted && version == Some(ours_version);
        if how != Delivery::Listed && !is_older(version, ours_version) {
            self.forget(&key);
        }
        own
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
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

/// What the OAuthToken cache keeps: spec, status, the identity of the object and a refresh
/// asked for with the annotation. Labels, other annotations (often a whole copy of the manifest
/// in `last-applied-configuration`) and managedFields are not read by the operator.
pub fn strip_token(token: &mut OAuthToken) {
    token.metadata.managed_fields = None;
    token.metadata.labels = None;
    let request = token
        .metadata
        .annotations
        .take()
        .and_then(|mut all| all.remove_entry(REFRESH_ANNOTATION));
    token.metadata.annotations = request.map(|entry| [entry].into());
}

/// Whether `token` is an OAuthToken the controller has not seen, or has seen with another spec
/// (generation) or another refresh request than the `cached` version: what starts a reconcile.
pub fn is_new_spec<K: Resource>(cached: Option<&K>, token: &K) -> bool {
    let request = |k: &K| {
        k.meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(REFRESH_ANNOTATION))
            .cloned()
    };
    cached.is_none_or(|old| {
        old.meta().uid != token.meta().uid
            || old.meta().generation != token.meta().generation
            || request(old) != request(token)
    })
}

/// How a Secret this process wrote is kept until the watch delivers it: like the cache keeps
/// it (a token Secret as a digest).
pub fn strip_owned_secret(secret: &mut Secret) {
    secret.metadata.managed_fields = None;
    if is_token_secret(secret) {
        let digest = published_digest(secret);
        secret.data = None;
        if let Some(digest) = digest {
            secret
                .annotations_mut()
                .insert(CACHED_DATA_DIGEST.to_string(), digest);
        }
    }
}

fn is_token_secret(secret: &Secret) -> bool {
    secret.labels().get(SECRET_ROLE_LABEL).map(String::as_str) == Some(ROLE_TARGET)
}

/// SHA-256 over a token Secret's data and this operator's labels on it, keys and values
/// length-prefixed: one value that says whether the Secret must be written again.
pub fn content_digest(
    data: &BTreeMap<String, k8s_openapi::ByteString>,
    labels: &BTreeMap<String, String>,
) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    for (key, value) in data {
        field(key.as_bytes());
        field(&value.0);
    }
    field(b"labels");
    for key in OUR_LABELS {
        field(key.as_bytes());
        field(labels.get(key).map(String::as_bytes).unwrap_or_default());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The labels this operator sets on its Secrets; only they count in [`content_digest`].
const OUR_LABELS: [&str; 3] = [MANAGED_BY_LABEL, OWNER_LABEL, SECRET_ROLE_LABEL];

/// The digest of what a token Secret holds, cached or not.
pub fn published_digest(secret: &Secret) -> Option<String> {
    match &secret.data {
        Some(data) => Some(content_digest(data, secret.labels())),
        None => secret.annotations().get(CACHED_DATA_DIGEST).cloned(),
    }
}

/// Secret data without a map: boxed keys and values in key order.
type CompactData = Box<[(Box<str>, Box<[u8]>)]>;

/// A Secret this operator owns, as the cache keeps it: the state Secret with its data (the
/// chain), the token Secret as a digest only (the state Secret is the source of its values).
/// About a third of the memory of a `Secret`: no maps, no metadata beyond what is compared.
pub struct OwnedSecret {
    resource_version: Option<Box<str>>,
    /// UID of the OAuthToken in the controller owner reference.
    controller: Option<Box<str>>,
    /// The state Secret's data.
    data: Option<CompactData>,
    /// A token Secret's [`content_digest`].
    digest: Option<Box<str>>,
}

impl std::fmt::Debug for OwnedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedSecret")
            .field("resource_version", &self.resource_version)
            .field("controller", &self.controller)
            .field("keys", &self.data.as_ref().map(|d| d.len()))
            .field("digest", &self.digest)
            .finish()
    }
}

impl OwnedSecret {
    pub fn from_secret(secret: &Secret) -> OwnedSecret {
        let controller = secret
            .owner_references()
            .iter()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.as_str().into());
        let (data, digest) = if is_token_secret(secret) {
            (None, published_digest(secret).map(String::into_boxed_str))
        } else {
            let data = secret.data.as_ref().map(|data| {
                data.iter()
                    .map(|(k, v)| (k.as_str().into(), v.0.clone().into_boxed_slice()))
                    .collect()
            });
            (data, None)
        };
        OwnedSecret {
            resource_version: secret.metadata.resource_version.as_deref().map(Into::into),
            controller,
            data,
            digest,
        }
    }

    /// The Secret as the reconcile reads it: name, version, controller owner reference, and
    /// the data or the digest.
    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let owner_references = self.controller.as_ref().map(|uid| {
            vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "oauth-token-operator.io/v1alpha1".to_string(),
                    kind: "OAuthToken".to_string(),
                    controller: Some(true),
                    uid: uid.to_string(),
                    ..Default::default()
                },
            ]
        });
        let annotations = self
            .digest
            .as_ref()
            .map(|digest| BTreeMap::from([(CACHED_DATA_DIGEST.to_string(), digest.to_string())]));
        Secret {
            metadata: kube::core::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                resource_version: self.resource_version.as_deref().map(str::to_string),
                owner_references,
                annotations,
                ..Default::default()
            },
            data: self.data.as_ref().map(|data| {
                data.iter()
                    .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.to_vec())))
                    .collect()
            }),
            ..Secret::default()
        }
    }
}

/// A watch cache of Secrets keyed by namespace and name, each kept as a `V` built from the
/// watched object: no `ObjectMeta`, no reflector keys.
pub struct WatchedSecrets<V> {
    entries: RwLock<HashMap<Key, V>>,
    /// Filled while the watch lists again; replaces `entries` when the list is complete.
    relisting: Mutex<Option<HashMap<Key, V>>>,
    listed: tokio::sync::watch::Sender<Listing>,
}

/// How far a [`WatchedSecrets`] watch has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listing {
    Pending,
    Listed,
    /// The controllers stopped: a waiter for the first list must not wait forever.
    Abandoned,
}

/// The Secrets this operator owns, in [`OwnedSecret`] form.
pub type OwnedSecrets = WatchedSecrets<Arc<OwnedSecret>>;

/// Every other Secret: only its resourceVersion, enough to know whether it exists and whether
/// its data must be read again.
pub type UserSecrets = WatchedSecrets<Option<Box<str>>>;

impl<V> Default for WatchedSecrets<V> {
    fn default() -> Self {
        WatchedSecrets {
            entries: RwLock::default(),
            relisting: Mutex::default(),
            listed: tokio::sync::watch::channel(Listing::Pending).0,
        }
    }
}

impl OwnedSecrets {
    pub fn apply(&self, event: &kube::runtime::watcher::Event<Secret>) {
        self.apply_with(event, |secret| Arc::new(OwnedSecret::from_secret(secret)));
    }
}

impl UserSecrets {
    pub fn apply(&self, event: &kube::runtime::watcher::Event<PartialObjectMeta<Secret>>) {
        self.apply_with(event, |meta| {
            meta.metadata.resource_version.as_deref().map(Into::into)
        });
    }
}

impl<V: Clone> WatchedSecrets<V> {
    fn apply_with<K: Resource>(
        &self,
        event: &kube::runtime::watcher::Event<K>,
        entry: impl Fn(&K) -> V,
    ) {
        use kube::runtime::watcher::Event;
        match event {
            Event::Init => *lock(&self.relisting) = Some(HashMap::new()),
            Event::InitApply(object) => {
                if let Some(relist) = lock(&self.relisting).as_mut() {
                    relist.insert(key_of(object), entry(object));
                }
            }
            Event::InitDone => {
                if let Some(relist) = lock(&self.relisting).take() {
                    *write(&self.entries) = relist;
                }
                self.leave_pending(Listing::Listed);
            }
            Event::Apply(object) => {
                write(&self.entries).insert(key_of(object), entry(object));
            }
            Event::Delete(object) => {
                write(&self.entries).remove(&key_of(object));
            }
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<V> {
        read(&self.entries)
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn len(&self) -> usize {
        read(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the watch has listed once; false if it was abandoned first.
    pub async fn wait_ready(&self) -> bool {
        let mut listed = self.listed.subscribe();
        matches!(
            listed.wait_for(|listing| *listing != Listing::Pending).await,
            Ok(listing) if *listing == Listing::Listed
        )
    }

    /// Releases whoever waits for a first list that will not come (the controllers stopped).
    pub fn abandon(&self) {
        self.leave_pending(Listing::Abandoned);
    }

    /// The first list's outcome, once: a later relist or stop does not change it.
    fn leave_pending(&self, outcome: Listing) {
        self.listed.send_if_modified(|listing| {
            let pending = *listing == Listing::Pending;
            if pending {
                *listing = outcome;
            }
            pending
        });
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
        let t0 = Instant::now();
        let key = ("shop".to_string(), "s".to_string());
        let mut written = Overlay::default();
        written.insert(secret("s", "12"), t0);
        let seen = written.newest(Some(secret("s", "11")), key.clone(), t0);
        assert_eq!(seen.unwrap().resource_version().as_deref(), Some("12"));
        // Not in the cache at all yet (just created).
        let seen = written.newest(None, key.clone(), t0);
        assert_eq!(seen.unwrap().resource_version().as_deref(), Some("12"));
        // Someone else wrote after us: theirs is newer.
        let seen = written.newest(Some(secret("s", "13")), key.clone(), t0);
        assert_eq!(seen.unwrap().resource_version().as_deref(), Some("13"));
        assert_eq!(written.len(), 0, "caught up: our copy is dropped");
    }

    #[test]
    fn a_burst_of_writes_leaves_no_large_table_behind() {
        let t0 = Instant::now();
        let mut written = Overlay::default();
        for i in 0..5000 {
            written.insert(secret(&format!("s-{i}"), "7"), t0);
        }
        assert!(written.entries.capacity() >= 5000);
        for i in 0..5000 {
            assert!(written.delivered(&secret(&format!("s-{i}"), "7"), Delivery::Changed));
        }
        assert_eq!(written.len(), 0);
        assert!(
            written.entries.capacity() <= 128,
            "{}",
            written.entries.capacity()
        );
    }

    #[test]
    fn an_undelivered_write_is_not_trusted_for_ever() {
        // Deleted while the watch was away: no event ever comes for our write.
        let t0 = Instant::now();
        let key = ("shop".to_string(), "s".to_string());
        let mut written = Overlay::default();
        written.insert(secret("s", "12"), t0);
        assert!(
            written
                .newest(None, key.clone(), t0 + OVERLAY_TTL / 2)
                .is_some()
        );
        assert!(written.newest(None, key, t0 + OVERLAY_TTL * 2).is_none());
        // Writes that are never read again go with the next sweep.
        written.insert(secret("a", "1"), t0);
        written.insert(secret("b", "2"), t0 + OVERLAY_TTL * 3);
        assert_eq!(written.len(), 1);
    }

    #[test]
    fn delivered_own_writes_are_recognised_and_forgotten() {
        let t0 = Instant::now();
        let mut written = Overlay::default();
        written.insert(secret("s", "12"), t0);
        assert!(
            !written.delivered(&secret("s", "11"), Delivery::Changed),
            "an older event"
        );
        assert_eq!(written.len(), 1);
        // In a relist, the visible cache keeps the old version until the list is complete:
        // our write stays in front of it.
        assert!(written.delivered(&secret("s", "12"), Delivery::Listed));
        assert_eq!(written.len(), 1);
        assert!(
            written.delivered(&secret("s", "12"), Delivery::Changed),
            "our own write"
        );
        assert_eq!(written.len(), 0);
        // A late deletion of an older version does not hide our newer write (recreated).
        written.insert(secret("s", "20"), t0);
        assert!(!written.delivered(&secret("s", "15"), Delivery::Deleted));
        assert_eq!(written.len(), 1);
        assert!(!written.delivered(&secret("s", "21"), Delivery::Deleted));
        assert_eq!(written.len(), 0);
    }

    #[test]
    fn token_secrets_are_cached_as_a_digest_of_data_and_labels() {
        let data = BTreeMap::from([("access_token".to_string(), ByteString(b"at-1".to_vec()))]);
        let labels = BTreeMap::from([
            (SECRET_ROLE_LABEL.to_string(), ROLE_TARGET.to_string()),
            ("team".to_string(), "shop".to_string()),
        ]);
        let mut token_secret = secret("t", "7");
        token_secret.metadata.labels = Some(labels.clone());
        token_secret.data = Some(data.clone());
        token_secret.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                controller: Some(true),
                uid: "token-uid".into(),
                ..Default::default()
            },
        ]);
        let digest = published_digest(&token_secret);
        assert_eq!(digest, Some(content_digest(&data, &labels)));

        let cached = OwnedSecret::from_secret(&token_secret).to_secret("shop", "t");
        assert!(cached.data.is_none());
        assert_eq!(published_digest(&cached), digest);
        assert_eq!(cached.resource_version().as_deref(), Some("7"));
        assert_eq!(cached.owner_references()[0].uid, "token-uid");

        // Other people's labels do not count; a change to ours or to the data does.
        let mut others = labels.clone();
        others.insert("team".into(), "billing".into());
        assert_eq!(content_digest(&data, &others), digest.clone().unwrap());
        let mut ours = labels.clone();
        ours.remove(SECRET_ROLE_LABEL);
        assert_ne!(content_digest(&data, &ours), digest.clone().unwrap());
        let changed = BTreeMap::from([("access_token".to_string(), ByteString(b"at-2".to_vec()))]);
        assert_ne!(content_digest(&changed, &labels), digest.unwrap());

        let mut written = token_secret.clone();
        strip_owned_secret(&mut written);
        assert!(written.data.is_none());
        assert_eq!(published_digest(&written), published_digest(&token_secret));
    }

    #[test]
    fn state_secrets_keep_their_data_in_the_cache() {
        let data = BTreeMap::from([
            ("refresh_token".to_string(), ByteString(b"rt-1".to_vec())),
            ("claim".to_string(), ByteString(b"{}".to_vec())),
        ]);
        let mut state = secret("t-oauth-state", "9");
        state.data = Some(data.clone());
        let cached = OwnedSecret::from_secret(&state).to_secret("shop", "t-oauth-state");
        assert_eq!(cached.data, Some(data));
        assert_eq!(cached.resource_version().as_deref(), Some("9"));
        assert!(cached.owner_references().is_empty());
    }

    #[test]
    fn the_owned_cache_swaps_in_a_relist_whole() {
        use kube::runtime::watcher::Event;
        let cache = OwnedSecrets::default();
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(secret("a", "1")));
        assert!(cache.is_empty(), "not before the list is complete");
        cache.apply(&Event::InitDone);
        cache.apply(&Event::Apply(secret("b", "2")));
        assert_eq!(cache.len(), 2);
        // A relist that no longer has `a`: it goes when the relist completes.
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(secret("b", "3")));
        assert!(cache.get("shop", "a").is_some());
        cache.apply(&Event::InitDone);
        assert!(cache.get("shop", "a").is_none());
        assert_eq!(
            cache
                .get("shop", "b")
                .unwrap()
                .to_secret("shop", "b")
                .resource_version()
                .as_deref(),
            Some("3")
        );
        cache.apply(&Event::Delete(secret("b", "4")));
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_for_the_first_list_is_released_when_the_watch_is_abandoned() {
        use kube::runtime::watcher::Event;
        let never_listed = Arc::new(OwnedSecrets::default());
        let waiter = tokio::spawn({
            let cache = never_listed.clone();
            async move { cache.wait_ready().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no list yet: it waits");
        never_listed.abandon();
        let released = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("released when abandoned");
        assert!(!released.unwrap(), "abandoned before its first list");

        // Once listed, stopping later does not turn it into a failure.
        let listed = OwnedSecrets::default();
        listed.apply(&Event::Init);
        listed.apply(&Event::InitDone);
        listed.abandon();
        assert!(listed.wait_ready().await);
        listed.apply(&Event::Init);
        listed.apply(&Event::InitDone);
        assert!(listed.wait_ready().await);
    }

    #[test]
    fn only_a_new_object_or_generation_starts_a_reconcile() {
        let token = |uid: &str, generation: i64, status_reason: &str| -> OAuthToken {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
                "metadata": {"name": "a", "namespace": "shop", "uid": uid,
                             "generation": generation, "labels": {"x": status_reason}},
                "spec": {
                    "tokenEndpoint": "https://idp.test/token",
                    "clientSecretRef": {"name": "client"},
                    "grant": {"clientCredentials": {}},
                },
                "status": {"conditions": [{"type": "Ready", "status": "True",
                    "reason": status_reason, "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
            }))
            .unwrap()
        };
        let first = token("u1", 1, "TokenValid");
        assert!(is_new_spec(None, &first));
        assert!(!is_new_spec(Some(&first), &token("u1", 1, "RefreshFailed")));
        assert!(is_new_spec(Some(&first), &token("u1", 2, "TokenValid")));
        assert!(is_new_spec(Some(&first), &token("u2", 1, "TokenValid")));
    }

    #[test]
    fn a_new_refresh_request_starts_a_reconcile_and_survives_the_strip() {
        let token = |request: Option<&str>| -> OAuthToken {
            let mut annotations = serde_json::json!({
                "kubectl.kubernetes.io/last-applied-configuration": "{\"a\": 1}",
            });
            if let Some(request) = request {
                annotations[REFRESH_ANNOTATION] = request.into();
            }
            let mut token: OAuthToken = serde_json::from_value(serde_json::json!({
                "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
                "metadata": {"name": "a", "namespace": "shop", "uid": "u1", "generation": 1,
                             "annotations": annotations},
                "spec": {
                    "tokenEndpoint": "https://idp.test/token",
                    "clientSecretRef": {"name": "client"},
                    "grant": {"clientCredentials": {}},
                },
            }))
            .unwrap();
            strip_token(&mut token);
            token
        };
        let none = token(None);
        assert_eq!(none.metadata.annotations, None);
        let first = token(Some("1"));
        assert_eq!(
            first.metadata.annotations,
            Some([(REFRESH_ANNOTATION.to_string(), "1".to_string())].into())
        );
        assert!(is_new_spec(Some(&none), &first));
        assert!(!is_new_spec(Some(&first), &token(Some("1"))));
        assert!(is_new_spec(Some(&first), &token(Some("2"))));
        assert!(is_new_spec(Some(&first), &none));
    }

    #[test]
    fn user_secrets_keep_only_their_version() {
        use kube::runtime::watcher::Event;
        let meta = |name: &str, version: &str| PartialObjectMeta::<Secret> {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..Default::default()
        };
        let cache = UserSecrets::default();
        cache.apply(&Event::Init);
        cache.apply(&Event::InitApply(meta("client", "5")));
        assert!(
            cache.get("shop", "client").is_none(),
            "not before the list is complete"
        );
        cache.apply(&Event::InitDone);
        assert_eq!(cache.get("shop", "client"), Some(Some("5".into())));
        cache.apply(&Event::Apply(meta("client", "6")));
        assert_eq!(cache.get("shop", "client"), Some(Some("6".into())));
        assert!(cache.get("other", "client").is_none());
        cache.apply(&Event::Delete(meta("client", "7")));
        assert!(cache.is_empty());
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

        // During a relist the old index still answers; the new one replaces it whole.
        index.upsert(&token("import-1"));
        index.begin_relist();
        assert_eq!(index.readers("shop", "import-1").len(), 1);
        index.upsert(&token("import-3"));
        assert_eq!(index.readers("shop", "import-1").len(), 1);
        assert!(index.readers("shop", "import-3").is_empty());
        index.end_relist();
        assert!(index.readers("shop", "import-1").is_empty());
        assert_eq!(index.readers("shop", "import-3").len(), 1);
    }
}
