//! Owner tokens: 16 random bytes as 32 lowercase hex characters, v1's format, so tools that read
//! lock values see the same shape. The generator is rand's thread-local ChaCha, seeded and
//! periodically reseeded from the OS, so tokens cannot be guessed by another client.

pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_lowercase_hex_and_distinct() {
        let tokens: Vec<String> = (0..1000).map(|_| new_token()).collect();
        for token in &tokens {
            assert_eq!(token.len(), 32, "{token}");
            assert!(
                token
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{token}"
            );
        }
        let distinct: std::collections::HashSet<_> = tokens.iter().collect();
        assert_eq!(distinct.len(), tokens.len());
    }
}
