//! Readers of every image format (to be written).
