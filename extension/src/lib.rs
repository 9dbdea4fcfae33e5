//! makenaide-core extension library.
