//! VHDX (to be written).
