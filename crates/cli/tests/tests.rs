//! The CLI's one integration-test binary: each module runs the built
//! `strata` binary on fixtures.

mod archs;
mod generate;
mod hostile;
mod inspect;
mod serve;
