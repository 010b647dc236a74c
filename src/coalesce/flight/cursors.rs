//! Where each of a flight's readers is: the set of `(next chunk index, reader id)` of every
//! client still reading, ordered so that the slowest reader is the first. Most flights never
//! have a reader besides their leader, so one reader is kept inline: a GET nobody joins
//! allocates no tree node, and moving its cursor is a comparison, not a tree's remove and
//! insert.

use std::collections::BTreeSet;

/// One reader's place: its next chunk index and its id.
pub(super) type Place = (usize, u64);

/// The readers' places.
#[derive(Debug)]
pub(super) enum Cursors {
    /// No reader, or one (the flight's leader, until someone joins).
    Few(Option<Place>),
    /// More than one reader has been here; stays a tree once it has been one.
    Many(BTreeSet<Place>),
}

impl Cursors {
    /// The leader alone, at the body's start.
    pub(super) fn leader(leader: u64) -> Cursors {
        Cursors::Few(Some((0, leader)))
    }

    pub(super) fn insert(&mut self, place: Place) {
        match self {
            Cursors::Few(None) => *self = Cursors::Few(Some(place)),
            Cursors::Few(Some(other)) => *self = Cursors::Many(BTreeSet::from([*other, place])),
            Cursors::Many(set) => {
                set.insert(place);
            }
        }
    }

    /// Removes `place`; false when it was not there.
    pub(super) fn remove(&mut self, place: &Place) -> bool {
        match self {
            Cursors::Few(Some(only)) if only == place => {
                *self = Cursors::Few(None);
                true
            }
            Cursors::Few(_) => false,
            Cursors::Many(set) => set.remove(place),
        }
    }

    pub(super) fn contains(&self, place: &Place) -> bool {
        match self {
            Cursors::Few(only) => only.as_ref() == Some(place),
            Cursors::Many(set) => set.contains(place),
        }
    }

    /// Moves reader `reader` from chunk `from` to the next one.
    pub(super) fn advance(&mut self, from: usize, reader: u64) {
        match self {
            Cursors::Few(Some(only)) if *only == (from, reader) => only.0 += 1,
            _ => {
                self.remove(&(from, reader));
                self.insert((from + 1, reader));
            }
        }
    }

    /// The slowest reader's next chunk index.
    pub(super) fn slowest(&self) -> Option<usize> {
        match self {
            Cursors::Few(only) => only.map(|(cursor, _)| cursor),
            Cursors::Many(set) => set.first().map(|(cursor, _)| *cursor),
        }
    }

    /// Removes every reader at the slowest place; returns how many.
    pub(super) fn remove_slowest(&mut self) -> usize {
        let Some(slowest) = self.slowest() else {
            return 0;
        };
        match self {
            Cursors::Few(_) => {
                *self = Cursors::Few(None);
                1
            }
            Cursors::Many(set) => {
                // The laggards only, not a walk of every reader (a herd has thousands).
                let laggards: Vec<Place> = set
                    .range((slowest, 0)..=(slowest, u64::MAX))
                    .copied()
                    .collect();
                for laggard in &laggards {
                    set.remove(laggard);
                }
                laggards.len()
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Cursors::Few(only) => usize::from(only.is_some()),
            Cursors::Many(set) => set.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FromIterator<Place> for Cursors {
    fn from_iter<I: IntoIterator<Item = Place>>(places: I) -> Cursors {
        let mut cursors = Cursors::Few(None);
        for place in places {
            cursors.insert(place);
        }
        cursors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reader_stays_inline_and_advances_in_place() {
        let mut cursors = Cursors::leader(0);
        cursors.advance(0, 0);
        cursors.advance(1, 0);
        assert!(matches!(cursors, Cursors::Few(Some((2, 0)))));
        assert!(cursors.contains(&(2, 0)));
        assert!(!cursors.contains(&(1, 0)));
        assert_eq!(cursors.slowest(), Some(2));
        assert!(cursors.remove(&(2, 0)));
        assert!(cursors.is_empty());
        assert_eq!(cursors.slowest(), None);
    }

    #[test]
    fn a_second_reader_makes_a_tree_ordered_by_place() {
        let mut cursors = Cursors::leader(0);
        cursors.advance(0, 0);
        cursors.insert((0, 1));
        cursors.insert((0, 2));
        assert_eq!(cursors.len(), 3);
        assert_eq!(cursors.slowest(), Some(0));
        cursors.advance(0, 1);
        assert!(cursors.contains(&(1, 1)));
        assert_eq!(cursors.remove_slowest(), 1);
        assert_eq!(cursors.len(), 2);
        assert_eq!(cursors.slowest(), Some(1));
        assert_eq!(cursors.remove_slowest(), 2);
        assert!(cursors.is_empty());
    }

    #[test]
    fn removing_a_place_that_is_not_there_changes_nothing() {
        let mut cursors = Cursors::leader(0);
        assert!(!cursors.remove(&(1, 0)));
        assert!(!cursors.remove(&(0, 7)));
        assert_eq!(cursors.len(), 1);
        assert!(cursors.contains(&(0, 0)));
    }

    #[test]
    fn advancing_a_reader_that_is_not_there_puts_it_at_its_next_place() {
        // As the tree's remove and insert did before `advance`.
        let mut cursors = Cursors::leader(0);
        cursors.advance(3, 9);
        assert_eq!(cursors.len(), 2);
        assert!(cursors.contains(&(4, 9)));
        assert!(cursors.contains(&(0, 0)));
    }
}
