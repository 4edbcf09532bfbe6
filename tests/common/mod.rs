#![allow(dead_code)]
pub mod backend;
pub mod proxy;
