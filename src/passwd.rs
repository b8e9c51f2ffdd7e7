//! crypt(3) password verification for AUTH tables.
//!
//! A prefix dispatcher over the RustCrypto and bcrypt crates. `$1$`
//! (md5-crypt) and DES hashes are refused: they are too
//! weak to protect a password that travels to us over the network.

/// True when `h` looks like a hash [`verify`] can check.
pub fn is_supported_hash(h: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "$6$",
        "$5$",
        "$2a$",
        "$2b$",
        "$2y$",
        "$y$",
        "$argon2id$",
        "$argon2i$",
    ];
    PREFIXES.iter().any(|p| h.starts_with(p))
        && h.split('$').filter(|f| !f.is_empty()).count() >= 3
        && !h.chars().any(|c| c.is_whitespace())
}

#[cfg(test)]
thread_local! {
    /// Hashes computed on this thread, for the tests that AUTH costs the
    /// same for every user.
    pub static HASHED: std::cell::Cell<Vec<String>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Check `password` against the crypt(3) hash `h`.
pub fn verify(password: &[u8], h: &str) -> bool {
    use sha_crypt::PasswordVerifier;
    #[cfg(test)]
    HASHED.with(|c| {
        let mut v = c.take();
        v.push(h.to_string());
        c.set(v);
    });
    if h.starts_with("$6$") || h.starts_with("$5$") {
        sha_crypt::ShaCrypt::default()
            .verify_password(password, h)
            .is_ok()
    } else if h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$") {
        // bcrypt reads only the first 72 bytes: a longer password cannot be
        // checked in full, so it never matches (crypt(3) in libxcrypt
        // truncates instead; use $y$ or $6$ for such passwords).
        password.len() <= 72 && bcrypt::verify(password, h).unwrap_or(false)
    } else if h.starts_with("$argon2") {
        argon2::Argon2::default()
            .verify_password(password, h)
            .is_ok()
    } else if h.starts_with("$y$") {
        yescrypt::Yescrypt::default()
            .verify_password(password, h)
            .is_ok()
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference hashes of "secret" made by libxcrypt (Python's crypt) and
    // `openssl passwd`, not by the crates under test.
    const SHA512: &str = "$6$saltsaltsaltsalt$ph0yGsyjzqdeFaon7.gJZo8eAG5/rj9/JdzOu1Rl7dKzBYg3xgvl7T2VQ2Rt81bc5AXkdA54r0p8QvC1omD6R1";
    const SHA256: &str = "$5$saltsaltsaltsalt$X0ra9qlY7TJaGBDgorLevriQfwysW8fXnbybcO4mF4/";
    const BCRYPT: &str = "$2b$12$OUS3jruRvlzceUk6ywVCiOR.F6F4etJOXHhYsKGN14X2UoGN5.X5i";

    #[test]
    fn sha_crypt_hashes() {
        assert!(verify(b"secret", SHA512));
        assert!(!verify(b"Secret", SHA512));
        assert!(verify(b"secret", SHA256));
        assert!(!verify(b"", SHA256));
    }

    #[test]
    fn bcrypt_hashes() {
        assert!(is_supported_hash(BCRYPT));
        assert!(verify(b"secret", BCRYPT));
        assert!(!verify(b"secreT", BCRYPT));
        // A password whose first 72 bytes match is not one.
        let long = [b'a'; 72];
        let h = bcrypt::hash(long, 4).unwrap();
        assert!(verify(&long, &h));
        assert!(!verify(&[&long[..], b"anything"].concat(), &h));
    }

    #[test]
    fn yescrypt_hashes() {
        const Y: &str = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$GmcwIgvdUC9qLWcKCi6gklUa1dM3ziD43YxYNURLKy0";
        assert!(is_supported_hash(Y));
        assert!(verify(b"secret", Y));
        assert!(!verify(b"secrets", Y));
    }

    #[test]
    fn argon2_hashes() {
        // From argon2-cffi (the reference C implementation).
        const A: &str = "$argon2id$v=19$m=8192,t=1,p=1$gAN4rp8PLwrlYvrXfBFR/w$5MXsAKW8Ej2pEP0saVZI+LmMnclzsoZbNEUkwbh5Br8";
        assert!(is_supported_hash(A));
        assert!(verify(b"secret", A));
        assert!(!verify(b"secret!", A));
    }

    #[test]
    fn refuses_weak_and_plain() {
        assert!(!is_supported_hash("secret"));
        assert!(!is_supported_hash("$1$salt$qJH7.N4xYta3aEG/dfqo/0"));
        assert!(!is_supported_hash("$6$"));
        assert!(!verify(b"secret", "secret"));
        assert!(!verify(b"x", "$6$garbage"));
    }
}
