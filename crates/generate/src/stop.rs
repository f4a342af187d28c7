//! Stop strings in streamed text, without ever printing them.
//!
//! Text that could be the beginning of a stop string is held back until the
//! next piece shows whether it is one: `"Hello\n\nUs"` with stop string
//! `"\nUser:"` releases `"Hello"` and holds `"\n\nUs"`.

/// Filters streamed text for stop strings: [`StopFilter::push`] each piece,
/// release what it returns, and [`StopFilter::finish`] at the end.
#[derive(Clone, Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

/// What [`StopFilter::push`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filtered {
    /// Text that can be released now.
    pub text: String,
    /// Whether a stop string was found (everything from it on is dropped).
    pub stopped: bool,
}

impl StopFilter {
    /// A filter for `stops` (none: every piece passes at once).
    pub fn new(stops: &[String]) -> StopFilter {
        StopFilter {
            stops: stops.to_vec(),
            held: String::new(),
        }
    }

    /// Adds `piece`; returns what can be released.
    pub fn push(&mut self, piece: &str) -> Filtered {
        self.held.push_str(piece);
        // The earliest complete stop string ends generation. Any occurrence
        // lies wholly in `held`: text is released only once no suffix of it
        // can begin a stop string.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Filtered {
                text,
                stopped: true,
            };
        }
        let keep = self.partial_suffix();
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Filtered {
            text,
            stopped: false,
        }
    }

    /// Releases what is held (generation ended for another reason).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop string.
    fn partial_suffix(&self) -> usize {
        let h = &self.held;
        let mut best = 0;
        for s in &self.stops {
            let max = s.len().saturating_sub(1).min(h.len());
            for len in (best + 1..=max).rev() {
                let start = h.len() - len;
                if h.is_char_boundary(start) && s.as_bytes().starts_with(&h.as_bytes()[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let r = f.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push(f.finish());
        (out, false)
    }

    #[test]
    fn holds_back_a_possible_start_and_drops_the_stop() {
        let (out, stopped) = run(&["\nUser:"], &["Hello", "\n\nUs", "er: hi"]);
        assert!(stopped);
        assert_eq!(out, ["Hello", "\n", ""]);
    }

    #[test]
    fn releases_held_text_that_turns_out_not_to_stop() {
        let (out, stopped) = run(&["STOP"], &["a ST", "ART", "!"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "a START!");
        assert_eq!(out[0], "a ");
    }

    #[test]
    fn stop_inside_one_piece_and_multibyte_text() {
        let (out, stopped) = run(&["é!"], &["caf", "é!x"]);
        assert!(stopped);
        assert_eq!(out.concat(), "caf");
        let (out, _) = run(&["ab"], &["日本", "a"]);
        assert_eq!(out, ["日本", "", "a"]);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, stopped) = run(&["cd", "b"], &["abcd"]);
        assert!(stopped);
        assert_eq!(out, ["a"]);
    }
}
