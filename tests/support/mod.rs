pub mod oidc_provider;
