#![allow(dead_code)]
pub mod backend;
