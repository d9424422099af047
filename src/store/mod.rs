//! Storage: where the database is and how to reach it, the private cluster, the schema's migrations, the daily
//! partitions of the fact tables, and the reader of PostgreSQL's binary COPY format.

pub mod copy;
pub mod db;
pub mod migrate;
pub mod partitions;
pub mod pg;
