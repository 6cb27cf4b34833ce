//! Generates the parser from `src/grammar.lalrpop` at build time.
fn main() {
    lalrpop::process_src().unwrap_or_else(|e| {
        eprintln!("lalrpop failed: {e}");
        std::process::exit(1)
    });
}
