//! Compiles the etcd v3 protos and ballot's own under `proto/` into Rust with protox (pure Rust,
//! no system `protoc`) and tonic-prost-build. Everything generated goes to
//! `OUT_DIR`; nothing is written into the source tree.

use std::path::PathBuf;

/// The proto files, relative to the include root `proto/`.
const PROTOS: &[&str] = &[
    "etcd/api/mvccpb/kv.proto",
    "etcd/api/authpb/auth.proto",
    "etcd/api/etcdserverpb/rpc.proto",
    "etcd/api/v3electionpb/v3election.proto",
    "etcd/api/v3lockpb/v3lock.proto",
    "ballot/groups.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed=build.rs");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }

    let mut compiler = protox::Compiler::new([&root])?;
    // Source info carries the proto comments into the generated doc comments.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;

    // The encoded descriptor set is exported as `FILE_DESCRIPTOR_SET` (for gRPC
    // server reflection and for tests that inspect the contract).
    std::fs::write(
        out_dir.join("etcd_descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keys, values and blobs as `bytes::Bytes`: decoded without a copy
        // where the buffer allows, and cheap to hand on.
        .bytes(".")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
