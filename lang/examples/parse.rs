//! Debug aid: parses a file and prints the tree and errors.
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        return;
    };
    let Ok(src) = std::fs::read_to_string(path) else {
        return;
    };
    let p = kalki_lang::parse(&src);
    println!("{:#?}", p.errors);
    println!("items: {}", p.file.items.len());
}
