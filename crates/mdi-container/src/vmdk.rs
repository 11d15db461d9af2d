//! VMDK (to be written).
