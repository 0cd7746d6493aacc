//! The settings in force: the service file's `[kube]` table, with the
//! command line's options over it.

use ipnet::Ipv4Net;

use crate::config::KubeSettings;

/// Settings given on the command line, each replacing the file's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub pools: Vec<Ipv4Net>,
    pub class: Option<String>,
    pub address_type: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("no address pools: give --pool CIDR, or pools in the [kube] table of the service file")]
    NoPools,
}

impl Overrides {
    /// The settings in force over `file`'s `[kube]` table.
    pub fn apply(&self, file: Option<&KubeSettings>) -> Result<KubeSettings, SettingsError> {
        let Self { pools, class, address_type } = self;
        let mut settings = file.cloned().unwrap_or_default();
        if !pools.is_empty() {
            settings.pools.clone_from(pools);
        }
        if let Some(class) = class {
            settings.class.clone_from(class);
        }
        if let Some(address_type) = address_type {
            settings.address_type.clone_from(address_type);
        }
        if settings.pools.is_empty() {
            return Err(SettingsError::NoPools);
        }
        Ok(settings)
    }
}
