//! Generated VM names: `adjective-noun`, readable and DNS-safe.

use rand::Rng;
use rand::seq::IndexedRandom;

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "brisk", "calm", "clever", "cosmic", "crisp", "dapper", "eager",
    "fancy", "fierce", "fluffy", "gentle", "giddy", "happy", "hazy", "humble", "jolly", "keen",
    "lively", "lucky", "mellow", "merry", "misty", "nimble", "noble", "plucky", "proud", "quick",
    "quiet", "rapid", "rustic", "shiny", "silent", "sleepy", "snappy", "solar", "spry", "steady",
    "sunny", "swift", "tidy", "tiny", "upbeat", "vivid", "witty", "zesty",
];

const NOUNS: &[&str] = &[
    "badger", "beacon", "bison", "breeze", "canyon", "cedar", "comet", "condor", "coral", "falcon",
    "fern", "fjord", "gecko", "glacier", "harbor", "heron", "island", "jaguar", "kestrel",
    "lagoon", "lantern", "lemur", "lynx", "maple", "meadow", "meteor", "narwhal", "nebula",
    "oasis", "orca", "otter", "panda", "pebble", "pine", "puffin", "quartz", "raven", "reef",
    "river", "sparrow", "summit", "tiger", "tundra", "walrus", "willow", "yak", "zephyr",
];

/// A random `adjective-noun`.
pub fn generate(rng: &mut impl Rng) -> String {
    let adj = ADJECTIVES.choose(rng).copied().unwrap_or("brave");
    let noun = NOUNS.choose(rng).copied().unwrap_or("otter");
    format!("{adj}-{noun}")
}

/// A generated name for which `taken` is false. After a few collisions a
/// numeric suffix is added, so this terminates however full the space is.
pub fn generate_unique<E>(
    rng: &mut impl Rng,
    mut taken: impl FnMut(&str) -> Result<bool, E>,
) -> Result<String, E> {
    for _ in 0..16 {
        let name = generate(rng);
        if !taken(&name)? {
            return Ok(name);
        }
    }
    loop {
        let name = format!("{}-{}", generate(rng), rng.random_range(1000..10000));
        if !taken(&name)? {
            return Ok(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::convert::Infallible;

    use banger_api::name::validate_name;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn generated_names_are_valid_dns_labels() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let n = generate(&mut rng);
            assert_eq!(validate_name(&n), Ok(()), "{n}");
            assert_eq!(n.matches('-').count(), 1);
        }
        for w in ADJECTIVES.iter().chain(NOUNS) {
            assert_eq!(validate_name(w), Ok(()), "{w}");
        }
    }

    #[test]
    fn unique_generation_avoids_taken_names_even_when_space_is_exhausted() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut taken: HashSet<String> = HashSet::new();
        for a in ADJECTIVES {
            for n in NOUNS {
                taken.insert(format!("{a}-{n}"));
            }
        }
        let name = generate_unique(&mut rng, |n| Ok::<_, Infallible>(taken.contains(n)))
            .expect("infallible");
        assert!(!taken.contains(&name));
        assert_eq!(validate_name(&name), Ok(()));
        assert_eq!(name.matches('-').count(), 2, "suffixed: {name}");
    }

    #[test]
    fn lookup_errors_propagate() {
        let mut rng = StdRng::seed_from_u64(1);
        let r = generate_unique(&mut rng, |_| Err::<bool, _>("db down"));
        assert_eq!(r, Err("db down"));
    }
}
