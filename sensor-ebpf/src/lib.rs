//! Empty library target: it lets `sensor` list this crate as a build-dependency,
//! so cargo reruns sensor's build.rs (which builds the programs) when it changes.
#![no_std]
