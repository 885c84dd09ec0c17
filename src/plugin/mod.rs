//! Docker's legacy plugin protocol: the HTTP server, its routes and the wire types.

pub mod handlers;
pub mod server;
pub mod wire;

pub use server::{bind, ipam_router, router, serve, serve_ipam, AppState};
