//! The `calico-libnetwork` binary: everything lives in the library.

fn main() {
    std::process::exit(calico_libnetwork::cli::main_entry());
}
