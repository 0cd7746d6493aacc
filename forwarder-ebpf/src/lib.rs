//! Exists so `forwarder` can name this crate as a build dependency (which
//! makes cargo rebuild the datapath when it changes); the programs are in
//! the binary target.
#![no_std]
