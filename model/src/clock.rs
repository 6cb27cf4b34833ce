//! The engine's clock: engine milliseconds to the local wall-clock time of day, and the
//! next moment a clock window can open or close. A fixed offset from UTC, or a time zone
//! whose offset changes (daylight saving). Pure: the tz rules are data (jiff's embedded
//! tz database); the caller looks the zone up by name. Semantics in `docs/runtime.md`,
//! "Time zones".

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;
const MINUTE_MS: u64 = 60_000;

/// A time zone and where engine time starts in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The IANA name, as given (`Europe/Berlin`).
    pub name: String,
    pub tz: TimeZone,
    /// The Unix time, in milliseconds, of engine time 0: 0 under `run` (engine time is
    /// Unix time), a trace's first timestamp under `simulate`.
    pub origin_utc_ms: i64,
}

impl Zone {
    /// The zone of an IANA name, from the embedded tz database.
    pub fn named(name: &str, origin_utc_ms: i64) -> Result<Zone, String> {
        // The embedded database itself, not `jiff::tz::db()`, which would look at
        // the environment (`TZDIR`) and the system's zoneinfo first where built with them.
        let tz = jiff::tz::TimeZoneDatabase::bundled()
            .get(name)
            .map_err(|_| {
                format!(
                "`{name}` is not a time zone of the IANA database (e.g. `Europe/Berlin`, `UTC`)"
            )
            })?;
        Ok(Zone {
            name: name.to_string(),
            tz,
            origin_utc_ms,
        })
    }

    fn instant(&self, t: u64) -> Option<Timestamp> {
        let t = i64::try_from(t).ok()?;
        Timestamp::from_millisecond(self.origin_utc_ms.checked_add(t)?).ok()
    }

    /// The offset from UTC at engine time `t`, in milliseconds (UTC outside jiff's range).
    fn offset_ms(&self, t: u64) -> i64 {
        self.instant(t)
            .map_or(0, |ts| i64::from(self.tz.to_offset(ts).seconds()) * 1000)
    }

    /// The first change of offset strictly after engine time `t`, in engine time.
    fn next_change(&self, t: u64) -> Option<u64> {
        let from = self.instant(t)?;
        let offset = self.tz.to_offset(from);
        self.tz
            .following(from)
            // A transition that only renames the zone changes no wall clock.
            .find(|tr| tr.offset() != offset)
            .and_then(|tr| {
                let ms = tr
                    .timestamp()
                    .as_millisecond()
                    .checked_sub(self.origin_utc_ms)?;
                u64::try_from(ms).ok()
            })
            .filter(|&c| c > t)
    }
}

/// How engine time maps to the local wall clock: [`Clock::Fixed`] is a zone without
/// daylight saving, the special case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clock {
    /// The local time of day, in milliseconds since midnight, at engine time 0.
    Fixed {
        day_offset_ms: u64,
    },
    Zone(Zone),
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::Fixed { day_offset_ms: 0 }
    }
}

impl Clock {
    /// The local wall-clock time of day at engine time `t`, in milliseconds since midnight.
    pub fn time_of_day(&self, t: u64) -> u64 {
        match self {
            Clock::Fixed { day_offset_ms } => (t % DAY_MS + day_offset_ms % DAY_MS) % DAY_MS,
            Clock::Zone(z) => local_of(z, t, z.offset_ms(t)),
        }
    }

    /// The local minute of the day at engine time `t` (0 to 1439).
    pub fn minute_of_day(&self, t: u64) -> u16 {
        u16::try_from(self.time_of_day(t) / MINUTE_MS).unwrap_or(0)
    }

    /// In a time zone, its offset from UTC at engine time `t` as `+01:00`: what tells the
    /// two passes through a repeated hour apart. `None` for a fixed offset.
    pub fn offset_text(&self, t: u64) -> Option<String> {
        let Clock::Zone(z) = self else { return None };
        let ms = z.offset_ms(t);
        let min = ms.abs() / MINUTE_MS as i64;
        let sign = if ms < 0 { '-' } else { '+' };
        Some(format!("{sign}{:02}:{:02}", min / 60, min % 60))
    }

    /// Whether the wall clock jumps at engine time `t` (a daylight-saving change): every
    /// clock window may open or close then, whatever its boundaries.
    pub fn jumps_at(&self, t: u64) -> bool {
        match self {
            Clock::Fixed { .. } => false,
            Clock::Zone(z) => t > 0 && z.offset_ms(t) != z.offset_ms(t - 1),
        }
    }

    /// The first moment strictly after `t` at which a window with one of `minutes` as a
    /// boundary can open or close: the wall clock reaching `HH:MM:00` of one of them, or
    /// jumping. `None` without minutes.
    pub fn next_boundary(&self, t: u64, minutes: impl IntoIterator<Item = u16>) -> Option<u64> {
        let local = self.time_of_day(t);
        // Until the next jump the offset is fixed and the wall clock runs with engine time.
        let steady = minutes
            .into_iter()
            .map(|m| {
                let at = u64::from(m) * MINUTE_MS;
                let ahead = (at + DAY_MS - local) % DAY_MS;
                t.saturating_add(if ahead == 0 { DAY_MS } else { ahead })
            })
            .min()?;
        let jump = match self {
            Clock::Fixed { .. } => None,
            Clock::Zone(z) => z.next_change(t),
        };
        Some(jump.map_or(steady, |j| j.min(steady)))
    }
}

fn local_of(z: &Zone, t: u64, offset_ms: i64) -> u64 {
    let utc = i128::from(z.origin_utc_ms) + i128::from(t) + i128::from(offset_ms);
    let day = i128::from(DAY_MS);
    u64::try_from(utc.rem_euclid(day)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn utc(s: &str) -> i64 {
        s.parse::<Timestamp>()
            .map(Timestamp::as_millisecond)
            .unwrap()
    }

    /// A zone clock whose engine time is Unix time, as under `run`.
    fn zone(name: &str) -> Clock {
        Clock::Zone(Zone::named(name, 0).unwrap())
    }

    fn at(s: &str) -> u64 {
        u64::try_from(utc(s)).unwrap()
    }

    fn hhmm(clock: &Clock, t: u64) -> String {
        let m = clock.minute_of_day(t);
        format!("{:02}:{:02}", m / 60, m % 60)
    }

    /// Every boundary the clock gives from `from` to `to` for the window `from_m..to_m`,
    /// with the wall clock there and whether the window is open just after.
    fn timeline(clock: &Clock, from: u64, to: u64, window: (u16, u16)) -> Vec<String> {
        let open = |t: u64| {
            let m = clock.minute_of_day(t);
            window.0 <= m && m < window.1
        };
        let mut out = Vec::new();
        let mut t = from;
        while let Some(b) = clock.next_boundary(t, [window.0, window.1]) {
            if b > to {
                break;
            }
            let ts = Timestamp::from_millisecond(i64::try_from(b).unwrap()).unwrap();
            out.push(format!(
                "{ts} {} {}",
                hhmm(clock, b),
                if open(b) { "open" } else { "closed" }
            ));
            t = b;
        }
        out
    }

    #[test]
    fn fixed_is_the_old_formula() {
        let c = Clock::Fixed {
            day_offset_ms: 19 * 3_600_000 + 58 * MINUTE_MS,
        };
        assert_eq!(hhmm(&c, 0), "19:58");
        assert_eq!(hhmm(&c, 2 * MINUTE_MS), "20:00");
        assert_eq!(c.next_boundary(0, [1200]), Some(2 * MINUTE_MS));
        assert_eq!(
            c.next_boundary(2 * MINUTE_MS, [1200]),
            Some(2 * MINUTE_MS + DAY_MS)
        );
        assert!(!c.jumps_at(2 * MINUTE_MS));
        assert_eq!(c.next_boundary(0, []), None);
    }

    #[test]
    fn utc_zone_is_unix_time() {
        let c = zone("UTC");
        let t = at("2026-03-29T01:30:00Z");
        assert_eq!(hhmm(&c, t), "01:30");
        assert_eq!(c.next_boundary(t, [150]), Some(t + 60 * MINUTE_MS));
        assert_eq!(c.next_boundary(t, [90]), Some(t + DAY_MS), "strictly after");
    }

    #[test]
    fn berlin_spring_forward_closes_the_window_at_the_jump() {
        let c = zone("Europe/Berlin");
        // 2026-03-29: 02:00 CET becomes 03:00 CEST, at 01:00 UTC.
        let day = timeline(
            &c,
            at("2026-03-28T23:00:00Z"),
            at("2026-03-29T22:59:59Z"),
            (90, 150),
        );
        assert_eq!(
            day,
            [
                "2026-03-29T00:30:00Z 01:30 open",
                "2026-03-29T01:00:00Z 03:00 closed",
            ]
        );
        assert!(c.jumps_at(at("2026-03-29T01:00:00Z")));
        assert!(!c.jumps_at(at("2026-03-29T00:59:59.999Z")));
        assert_eq!(hhmm(&c, at("2026-03-29T00:59:59Z")), "01:59");
    }

    #[test]
    fn berlin_fall_back_opens_the_window_on_both_passes() {
        let c = zone("Europe/Berlin");
        // 2026-10-25: 03:00 CEST becomes 02:00 CET, at 01:00 UTC.
        let day = timeline(
            &c,
            at("2026-10-24T22:00:00Z"),
            at("2026-10-25T22:59:59Z"),
            (90, 150),
        );
        assert_eq!(
            day,
            [
                "2026-10-24T23:30:00Z 01:30 open",
                "2026-10-25T00:30:00Z 02:30 closed",
                "2026-10-25T01:00:00Z 02:00 open",
                "2026-10-25T01:30:00Z 02:30 closed",
            ]
        );
    }

    #[test]
    fn an_ordinary_day_has_two_boundaries() {
        let c = zone("Europe/Berlin");
        let day = timeline(
            &c,
            at("2026-06-30T22:00:00Z"),
            at("2026-07-01T21:59:59Z"),
            (90, 150),
        );
        assert_eq!(
            day,
            [
                "2026-06-30T23:30:00Z 01:30 open",
                "2026-07-01T00:30:00Z 02:30 closed",
            ]
        );
    }

    #[test]
    fn lord_howe_moves_half_an_hour() {
        let c = zone("Australia/Lord_Howe");
        // 2026-10-04: 02:00 +10:30 becomes 02:30 +11:00, at 2026-10-03T15:30Z.
        let jump = at("2026-10-03T15:30:00Z");
        assert!(c.jumps_at(jump));
        assert_eq!(hhmm(&c, jump - 1), "01:59");
        assert_eq!(hhmm(&c, jump), "02:30");
        // A window 02:00..02:15 never opens that day; its timer stops at the jump.
        let day = timeline(&c, jump - 3_600_000, jump + 20 * 3_600_000, (120, 135));
        assert_eq!(day, ["2026-10-03T15:30:00Z 02:30 closed"]);
        // 2026-04-05: 02:00 +11:00 becomes 01:30 +10:30: 01:30..02:00 twice.
        let back = at("2026-04-04T15:00:00Z");
        assert!(c.jumps_at(back));
        assert_eq!(hhmm(&c, back - 1), "01:59");
        assert_eq!(hhmm(&c, back), "01:30");
    }

    #[test]
    fn a_zone_with_an_origin_counts_from_it() {
        let origin = utc("2026-03-29T00:00:00Z");
        let c = Clock::Zone(Zone::named("Europe/Berlin", origin).unwrap());
        assert_eq!(hhmm(&c, 0), "01:00");
        assert_eq!(c.next_boundary(0, [90]), Some(30 * MINUTE_MS));
        assert_eq!(c.next_boundary(30 * MINUTE_MS, [150]), Some(60 * MINUTE_MS));
        assert_eq!(hhmm(&c, 60 * MINUTE_MS), "03:00");
    }

    #[test]
    fn unknown_zone_is_refused() {
        let e = Zone::named("Europe/Berlinn", 0).unwrap_err();
        assert!(e.contains("`Europe/Berlinn`"), "{e}");
    }
}
