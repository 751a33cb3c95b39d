//! Administrative units and the tree that relays are arranged in.
//!
//! Since 1 July 2025 Vietnam has two tiers of local government: 34 provinces and 3,321
//! commune-level units. Former districts no longer govern, but they remain the natural
//! cluster for communes that share a relay. Cabinet names every place in that tree by a
//! unit code:
//!
//! | unit | code | example |
//! | --- | --- | --- |
//! | commune (xã, phường, đặc khu) | 5-digit statistics code | `18562` (Xã Thạch Hà) |
//! | cluster (a former district) | `PP-DDD` | `42-445` (former Huyện Thạch Hà) |
//! | province | 2-digit statistics code | `42` (Tỉnh Hà Tĩnh) |
//! | the nation | `VN` | |
//!
//! The list is embedded from `data/units.tsv`, derived from the national list of communes
//! in force since 1 July 2025 (see `docs/architecture.md` for its sources).

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

/// The code of the root of the unit tree.
pub const NATIONAL: &str = "VN";

const UNITS_TSV: &str = include_str!("../data/units.tsv");

/// One commune-level unit from the national list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commune {
    pub code: String,
    pub name: String,
    pub province_code: String,
    pub province: String,
    /// The former district (abolished in 2025) that held most of the commune's territory;
    /// `None` for the few communes whose old parts could not be traced.
    pub former_district_code: Option<String>,
    pub former_district: Option<String>,
}

/// What kind of place a unit code names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Commune,
    Cluster,
    Province,
    National,
}

/// A unit code that was checked against the national list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitCode(String);

impl UnitCode {
    /// Checks `code` against the national list.
    pub fn parse(code: &str) -> Result<UnitCode, UnitError> {
        let code = code.trim();
        let units = Units::get();
        if units.level_of(code).is_some() {
            Ok(UnitCode(code.to_string()))
        } else {
            Err(UnitError::Unknown(code.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn level(&self) -> Level {
        Units::get()
            .level_of(&self.0)
            .expect("a UnitCode is only built from a known code")
    }

    /// The unit above this one in the relay tree, `None` for the nation.
    pub fn parent(&self) -> Option<UnitCode> {
        Units::get().parent(&self.0).map(UnitCode)
    }

    /// This unit followed by every unit above it, up to the nation.
    pub fn path_to_root(&self) -> Vec<UnitCode> {
        let mut path = vec![self.clone()];
        while let Some(parent) = path.last().and_then(UnitCode::parent) {
            path.push(parent);
        }
        path
    }

    /// A readable name: "Xã Thạch Hà", "Cụm Huyện Thạch Hà (Tỉnh Hà Tĩnh)", "Tỉnh Hà Tĩnh".
    pub fn name(&self) -> String {
        Units::get().name(&self.0)
    }
}

impl fmt::Display for UnitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error(
        "unknown unit code {0:?}: use a 5-digit commune code, a 2-digit province code or a \
         cluster id PROVINCE-DISTRICT (e.g. 42-445) from the national list"
    )]
    Unknown(String),
}

/// The embedded national list, indexed for lookups.
pub struct Units {
    communes: HashMap<String, Commune>,
    provinces: HashMap<String, String>,
    /// cluster id `PP-DDD` → former district name
    clusters: HashMap<String, String>,
}

impl Units {
    /// The embedded list, parsed once.
    pub fn get() -> &'static Units {
        static UNITS: OnceLock<Units> = OnceLock::new();
        UNITS.get_or_init(|| Units::parse(UNITS_TSV))
    }

    fn parse(tsv: &str) -> Units {
        let mut units = Units {
            communes: HashMap::new(),
            provinces: HashMap::new(),
            clusters: HashMap::new(),
        };
        for line in tsv.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            let [code, name, pcode, pname, dcode, dname] = f[..] else {
                panic!("embedded units.tsv has a malformed line: {line:?}");
            };
            let district = (!dcode.is_empty()).then(|| dcode.to_string());
            if let Some(d) = &district {
                units
                    .clusters
                    .insert(format!("{pcode}-{d}"), dname.to_string());
            }
            units.provinces.insert(pcode.to_string(), pname.to_string());
            units.communes.insert(
                code.to_string(),
                Commune {
                    code: code.to_string(),
                    name: name.to_string(),
                    province_code: pcode.to_string(),
                    province: pname.to_string(),
                    former_district_code: district,
                    former_district: (!dname.is_empty()).then(|| dname.to_string()),
                },
            );
        }
        units
    }

    pub fn commune(&self, code: &str) -> Option<&Commune> {
        self.communes.get(code)
    }

    /// Every commune, in no particular order.
    pub fn communes(&self) -> impl Iterator<Item = &Commune> {
        self.communes.values()
    }

    pub fn level_of(&self, code: &str) -> Option<Level> {
        if code == NATIONAL {
            Some(Level::National)
        } else if self.communes.contains_key(code) {
            Some(Level::Commune)
        } else if self.provinces.contains_key(code) {
            Some(Level::Province)
        } else if self.clusters.contains_key(code) {
            Some(Level::Cluster)
        } else {
            None
        }
    }

    fn parent(&self, code: &str) -> Option<String> {
        match self.level_of(code)? {
            Level::National => None,
            Level::Province => Some(NATIONAL.to_string()),
            Level::Cluster => code.split_once('-').map(|(p, _)| p.to_string()),
            Level::Commune => {
                let c = &self.communes[code];
                Some(match &c.former_district_code {
                    Some(d) => format!("{}-{d}", c.province_code),
                    None => c.province_code.clone(),
                })
            }
        }
    }

    fn name(&self, code: &str) -> String {
        match self.level_of(code) {
            Some(Level::National) => "Việt Nam".to_string(),
            Some(Level::Province) => self.provinces[code].clone(),
            Some(Level::Commune) => self.communes[code].name.clone(),
            Some(Level::Cluster) => {
                let province = code
                    .split_once('-')
                    .and_then(|(p, _)| self.provinces.get(p))
                    .map(String::as_str)
                    .unwrap_or("");
                format!("Cụm {} ({province})", self.clusters[code])
            }
            None => code.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_list_has_every_unit_in_force_since_july_2025() {
        let units = Units::get();
        assert_eq!(units.communes.len(), 3321);
        assert_eq!(units.provinces.len(), 34);
    }

    #[test]
    fn thach_ha_sits_under_its_former_district_and_province() {
        let thach_ha = UnitCode::parse("18562").unwrap();
        assert_eq!(thach_ha.level(), Level::Commune);
        assert_eq!(thach_ha.name(), "Xã Thạch Hà");
        let path: Vec<String> = thach_ha
            .path_to_root()
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(path, ["18562", "42-445", "42", "VN"]);
        assert_eq!(
            UnitCode::parse("42-445").unwrap().name(),
            "Cụm Huyện Thạch Hà (Tỉnh Hà Tĩnh)"
        );
    }

    #[test]
    fn unknown_codes_are_refused_with_a_hint() {
        let err = UnitCode::parse("99999").unwrap_err();
        assert!(err.to_string().contains("42-445"));
        assert!(UnitCode::parse("").is_err());
        assert!(UnitCode::parse("42-999").is_err());
    }
}
