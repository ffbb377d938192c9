//! The qemu-io command language of `zcow-io`.
