pub mod e2e;
pub mod fake_token;
pub mod mock_kube;
pub mod oidc_provider;
