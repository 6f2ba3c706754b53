//! What happens to a page's body: the streaming HTML [`rewrite`] that writes the token
//! into embed tags, and the [`compress`]ion of rewritten pages for clients that accept it.

pub mod compress;
pub mod rewrite;
