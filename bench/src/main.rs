//! pr-bench: drives a helper socket with concurrent clients (to be written: issue 6).
fn main() {
    eprintln!("pr-bench: not written yet");
    std::process::exit(2);
}
