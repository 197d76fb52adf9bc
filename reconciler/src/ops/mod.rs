//! Layer 3: operations on an environment's store: apply (with its guards and policy), drift,
//! approvals, migration and drain jobs, backup and restore, promotion between env branches,
//! inventory decisions, and the client for the nodes' admin API. Imports from `desired` and
//! `store` only.

pub mod apply;
pub mod approvals;
pub mod backup;
pub mod drift;
pub mod inventory;
pub mod jobs;
pub mod nodes;
pub mod promote;
pub mod run;
