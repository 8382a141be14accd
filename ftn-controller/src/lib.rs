//! ftn's controller library.
pub mod dataplane;
