//! `kalkic init`: the starter policy, filled in. Pure: the binary writes it.

use kalki_lang::lexer::{Lexer, Token};

/// The files `kalkic init` writes: the policy (its text has the site named `SITE_NAME`)
/// and its tests (`kalkic test`).
pub const POLICY_FILE: &str = "site.kalki";
pub const TEST_FILE: &str = "site.test.jsonl";
const STARTER: &str = include_str!("init/starter.kalki");
/// The starter policy's tests; they name devices and rules, not the site.
pub const STARTER_TESTS: &str = include_str!("init/starter.test.jsonl");

/// The starter policy for a site called `site`, or why that cannot be a site's name.
pub fn starter(site: &str) -> Result<String, String> {
    let tokens: Vec<Token> = Lexer::new(site)
        .filter_map(Result::ok)
        .map(|t| t.1)
        .collect();
    match tokens.as_slice() {
        [Token::Ident(name)] if name == site => Ok(STARTER.replace("SITE_NAME", site)),
        [t] if !t.text().is_empty() && t.text() == site => Err(format!(
            "`{site}` is a keyword of the language; choose another site name"
        )),
        _ => Err(format!(
            "`{site}` is not a name: use letters, digits and `_`, starting with a letter or `_`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(starter("home").is_ok_and(|s| s.contains("site home {")));
        assert!(!starter("home").is_ok_and(|s| s.contains("SITE_NAME")));
        assert!(starter("site").is_err_and(|e| e.contains("keyword")));
        for bad in ["", "my-site", "1st", "a b", "x{", "\"s\""] {
            assert!(starter(bad).is_err(), "{bad:?}");
        }
    }
}
