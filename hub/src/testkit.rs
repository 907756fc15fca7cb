//! A real hub on a temp dir, for the domain's unit tests: keys, a published model version,
//! enrolled devices. Everything goes through the domain's own entry points.

use std::sync::Arc;

use edgefleet_common::device::EnrollRequest;
use edgefleet_common::manifest::{ArtifactRef, ModelFormat};
use edgefleet_common::trust::Delegation;
use edgefleet_common::{
    DataType, Digest, Lineage, ModelManifest, Permission, SecretKey, Signed, TensorSpec, TrustRoot,
};

use crate::config::{HubConfig, RuntimeConfig};
use crate::hub::Hub;

pub const TOKEN: &str = "enrollment-token-for-tests";

pub struct Kit {
    pub hub: Arc<Hub>,
    pub root: SecretKey,
    pub hub_key: SecretKey,
    pub delegation: Signed<Delegation>,
    config: RuntimeConfig,
    _dir: tempfile::TempDir,
}

fn tensor(name: &str, shape: Vec<i64>, features: &[&str]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype: DataType::Fp32,
        shape,
        feature_names: features.iter().map(|f| (*f).into()).collect(),
    }
}

/// A model of (price, temp) fitted by the reference trainer's own code on `rows` (price,
/// temp, target), as ONNX with the kit's input `x`: a ridge regression with output `y`
/// `[-1, 1]`, or with `classifier` a logistic regression with labels `y` (INT64 `[-1]`) and
/// probabilities `p` (FP32 `[-1, 2]`).
pub fn fit_price_temp(rows: &[(f64, f64, f64)], classifier: bool) -> Vec<u8> {
    let data = edgefleet_trainer::Dataset {
        x: rows.iter().flat_map(|r| [r.0, r.1]).collect(),
        y: rows.iter().map(|r| r.2).collect(),
        features: vec!["price".into(), "temp".into()],
        target: "truth_y".into(),
        skipped: 0,
    };
    let params = edgefleet_trainer::Params {
        model: if classifier {
            edgefleet_trainer::ModelKind::Logistic
        } else {
            edgefleet_trainer::ModelKind::Ridge
        },
        alpha: if classifier { 0.01 } else { 0.001 },
        validation: 0.0,
        ..Default::default()
    };
    let sig = edgefleet_trainer::Signature {
        input: "x".into(),
        features: 2,
        feature_names: vec!["price".into(), "temp".into()],
        output: "y".into(),
        flat_output: classifier,
        classifier: classifier.then(|| edgefleet_trainer::Classifier {
            probabilities: Some("p".into()),
        }),
    };
    edgefleet_trainer::train(&data, &params, &sig)
        .expect("fit")
        .onnx
}

impl Kit {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// A kit whose hub configuration `tune` changes first.
    pub fn with(tune: impl FnOnce(&mut HubConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let (root, hub_key) = (
            SecretKey::generate().expect("key"),
            SecretKey::generate().expect("key"),
        );
        let now = crate::now();
        let delegation = Signed::sign(
            &Delegation {
                key: hub_key.public(),
                label: "test hub".into(),
                patterns: vec!["*".into()],
                permissions: vec![Permission::Manifests, Permission::Assignments],
                issued_at: now,
                expires_at: now + 3600,
            },
            &root,
            None,
        )
        .expect("delegation");
        let mut hub_config = HubConfig {
            data_dir: dir.path().to_owned(),
            enrollment_token: Some(TOKEN.into()),
            ..HubConfig::default()
        };
        tune(&mut hub_config);
        let config = RuntimeConfig {
            config: hub_config,
            trust: TrustRoot::new(root.public()),
            signing_key: hub_key.clone(),
            delegation: delegation.clone(),
            rotations: vec![],
        };
        Kit {
            hub: Arc::new(Hub::open(config.clone(), "admin").expect("open")),
            root,
            hub_key,
            delegation,
            config,
            _dir: dir,
        }
    }

    /// The hub stopped and started again on the same data, as after a crash: nothing is
    /// flushed but what the domain flushed itself. Every other handle on the hub must be
    /// gone (sled's lock goes with the last one).
    pub fn restart(self) -> Self {
        let Kit {
            hub,
            root,
            hub_key,
            delegation,
            config,
            _dir,
        } = self;
        drop(hub);
        Kit {
            hub: Arc::new(Hub::open(config.clone(), "admin").expect("reopen")),
            root,
            hub_key,
            delegation,
            config,
            _dir,
        }
    }

    /// Root delegates the hub key anew (`patterns`, `permissions`), and the hub reloads with
    /// it, as after `edgefleet delegate` and a reload.
    pub fn redelegate(&mut self, patterns: &[&str], permissions: &[Permission]) {
        let now = crate::now();
        self.delegation = Signed::sign(
            &Delegation {
                key: self.hub_key.public(),
                label: "test hub".into(),
                patterns: patterns.iter().map(|p| (*p).into()).collect(),
                permissions: permissions.to_vec(),
                issued_at: now,
                expires_at: now + 3600,
            },
            &self.root,
            None,
        )
        .expect("delegation");
        self.config.delegation = self.delegation.clone();
        self.hub.reload(self.config.clone());
    }

    /// Publishes `model` `version` with inputs `price`, `temp` and output `y` (an artifact
    /// that is not a model: enough for everything but the engine).
    pub async fn publish(&self, model: &str, version: u64) {
        self.publish_artifact(model, version, format!("{model} v{version}").into_bytes())
            .await;
    }

    /// [`Kit::publish`] with `artifact` as the model file.
    pub async fn publish_artifact(&self, model: &str, version: u64, artifact: Vec<u8>) {
        self.publish_outputs(
            model,
            version,
            artifact,
            vec![tensor("y", vec![-1, 1], &[])],
        )
        .await;
    }

    /// [`Kit::publish_artifact`] of a binary classifier ([`fit_price_temp`]'s): labels `y`
    /// (INT64 `[-1]`) and probabilities `p` (FP32 `[-1, 2]`).
    pub async fn publish_classifier(&self, model: &str, version: u64, artifact: Vec<u8>) {
        let labels = TensorSpec {
            datatype: DataType::Int64,
            ..tensor("y", vec![-1], &[])
        };
        let probabilities = tensor("p", vec![-1, 2], &["0", "1"]);
        self.publish_outputs(model, version, artifact, vec![labels, probabilities])
            .await;
    }

    async fn publish_outputs(
        &self,
        model: &str,
        version: u64,
        artifact: Vec<u8>,
        outputs: Vec<TensorSpec>,
    ) {
        let digest = Digest::of(&artifact);
        let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(artifact.clone())]);
        self.hub
            .registry
            .receive_blob(&digest.to_hex(), chunks)
            .await
            .expect("blob");
        let manifest = ModelManifest {
            name: model.into(),
            version,
            artifact: ArtifactRef {
                sha256: digest,
                size: artifact.len() as u64,
                format: ModelFormat::Onnx,
            },
            inputs: vec![tensor("x", vec![-1, 2], &["price", "temp"])],
            outputs,
            smoke_tests: vec![],
            created_at: crate::now(),
            lineage: Lineage::default(),
            reference_profile: None,
            description: String::new(),
        };
        let signed =
            Signed::sign(&manifest, &self.hub_key, Some(self.delegation.clone())).expect("sign");
        self.hub
            .publish_model(&signed.to_bytes().expect("bytes"))
            .await
            .expect("publish");
    }

    /// Enrolls `id` (approved with the enrollment token when `approved`); its key.
    pub async fn enroll(&self, id: &str, tags: &[&str], approved: bool) -> SecretKey {
        let key = SecretKey::generate().expect("key");
        let req = EnrollRequest {
            device_id: id.into(),
            public_key: key.public(),
            tags: tags.iter().map(|t| (*t).into()).collect(),
            hostname: "test".into(),
            agent_version: "test".into(),
            enrollment_token: approved.then(|| TOKEN.into()),
            requested_at: crate::now(),
        };
        let signed = Signed::sign(&req, &key, None).expect("sign");
        self.hub
            .enroll(&signed.to_bytes().expect("bytes"))
            .await
            .expect("enroll");
        key
    }
}
