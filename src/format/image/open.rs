//! Opening an image: header, tables, backing chain, data file, zoned
//! metadata, and the metadata-overlap check of the open.

use super::*;

/// Read the first cluster of a store (bounded by the file length).
pub fn read_header_cluster(store: &dyn Storage) -> Result<Vec<u8>> {
    let len = store.len()?;
    let mut first = vec![0u8; len.min(112) as usize];
    store.read_at(0, &mut first)?;
    let cs = Header::peek_cluster_size(&first)?;
    let mut c0 = vec![0u8; cs.min(len) as usize];
    store.read_at(0, &mut c0)?;
    Ok(c0)
}

/// Read and parse the header as `opts` asks (check mode is lenient).
pub(super) fn read_header(store: &dyn Storage, opts: &OpenOptions) -> Result<Header> {
    let c0 = read_header_cluster(store)?;
    Header::parse(
        &c0,
        ParseMode {
            allow_empty_reftable: opts.check_mode,
        },
    )
}

pub(super) fn read_u64_table(
    store: &dyn Storage,
    off: u64,
    n: u64,
    what: &str,
) -> Result<Vec<u64>> {
    let bytes = n * 8;
    let len = store.len()?;
    if off.checked_add(bytes).is_none_or(|e| e > len) {
        return Err(invalid!(
            "{what} at offset {off:#x} ({n} entries) runs past the end of the file ({len} bytes)"
        ));
    }
    let mut raw = vec![0u8; bytes as usize];
    store.read_at(off, &mut raw)?;
    Ok(raw.chunks_exact(8).map(|c| be64(c, 0)).collect())
}

/// An OS error as strerror says it (without Rust's "(os error N)").
fn os_msg(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// QEMU's wording of a backing file that cannot be opened: "Could not
/// open backing file: " and the inner reason, itself "Could not open
/// 'PATH': REASON" when the file itself failed to open (nested for deeper
/// layers, as QEMU nests them).
fn backing_err(p: &Path, e: FormatError) -> FormatError {
    let inner = match &e {
        FormatError::Storage(StorageError::Io {
            offset: 0,
            len: 0,
            source,
            ..
        }) => format!("Could not open '{}': {}", p.display(), os_msg(source)),
        other => other.to_string(),
    };
    invalid!("Could not open backing file: {inner}")
}

fn open_backing_file(p: &Path) -> Result<FileStorage> {
    FileStorage::open(p, true).map_err(|e| {
        invalid!(
            "Could not open backing file: Could not open '{}': {}",
            p.display(),
            os_msg(&e)
        )
    })
}

pub(super) fn probe_is_qcow2(p: &Path) -> Result<bool> {
    let s = open_backing_file(p)?;
    let mut m = [0u8; 4];
    if s.len()? < 4 {
        return Ok(false);
    }
    s.read_at(0, &mut m)?;
    Ok(u32::from_be_bytes(m) == crate::format::header::QCOW_MAGIC)
}

impl Qcow2 {
    /// Open the image at `path`, following its backing chain and data file
    /// as `opts` allows.
    pub fn open_path(path: &Path, opts: &OpenOptions) -> Result<Qcow2> {
        let mut visited = HashSet::new();
        Self::open_path_depth(path, opts, 0, &mut visited)
    }

    pub(super) fn open_path_depth(
        path: &Path,
        opts: &OpenOptions,
        depth: u32,
        visited: &mut HashSet<PathBuf>,
    ) -> Result<Qcow2> {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if !visited.insert(canon) {
            return Err(invalid!(
                "backing chain loops: '{}' is its own ancestor",
                path.display()
            ));
        }
        let store = FileStorage::open(path, opts.read_only).map_err(|e| {
            FormatError::Storage(StorageError::Io {
                op: crate::storage::Op::Read,
                offset: 0,
                len: 0,
                source: e,
            })
        })?;
        // The store's own file, for zero-copy reads (`read_direct`) and
        // payloads that store their bytes themselves (`write_from`).
        let direct = store.try_clone_file().ok();
        let store: Arc<dyn Storage> = Arc::new(store);
        let header = read_header(store.as_ref(), opts)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // Data file (read path only; writes are refused later).
        let data: Option<Arc<dyn Storage>> = match header.data_file() {
            Some(name) if opts.backing == BackingPolicy::Follow => {
                let p = dir.join(name);
                let s = FileStorage::open(&p, true)
                    .map_err(|e| invalid!("Could not open data file '{}': {e}", p.display()))?;
                Some(Arc::new(s))
            }
            _ => None,
        };
        let mut chain = Vec::new();
        let backing: Option<Arc<dyn GuestRead>> = match (&header.backing_file, opts.backing) {
            (Some(name), BackingPolicy::Follow) => {
                if depth + 1 > MAX_BACKING_DEPTH {
                    return Err(invalid!(
                        "backing chain deeper than {MAX_BACKING_DEPTH} images at '{name}'"
                    ));
                }
                let p = if Path::new(name).is_absolute() {
                    PathBuf::from(name)
                } else {
                    dir.join(name)
                };
                let fmt = header.backing_format().map(str::to_string);
                let is_qcow2 = match fmt.as_deref() {
                    Some("qcow2") => true,
                    Some("raw") => false,
                    Some(other) => {
                        return Err(FormatError::Unsupported(format!(
                            "backing file format '{other}' is not supported"
                        )))
                    }
                    None => probe_is_qcow2(&p)?,
                };
                let bopts = OpenOptions {
                    read_only: true,
                    ..opts.clone()
                };
                if is_qcow2 {
                    let b = Self::open_path_depth(&p, &bopts, depth + 1, visited)
                        .map_err(|e| backing_err(&p, e))?;
                    chain.push(name.clone());
                    chain.extend(b.backing_chain.iter().cloned());
                    Some(Arc::new(b))
                } else {
                    let s = open_backing_file(&p)?;
                    chain.push(name.clone());
                    Some(Arc::new(RawBacking::new(Arc::new(s))?))
                }
            }
            (Some(name), BackingPolicy::Refuse) => {
                return Err(FormatError::Unsupported(format!(
                "the image names a backing file '{name}', which this caller does not allow opening"
            )))
            }
            _ => None,
        };
        let direct = if data.is_none() { direct } else { None };
        let mut img = Self::open_parsed(store, header, data, backing, opts)?;
        img.path = Some(path.to_path_buf());
        img.direct = direct;
        img.backing_chain = chain;
        Ok(img)
    }

    /// Open an image on a store. Backing files are never opened here: with
    /// [`BackingPolicy::Follow`] use [`Qcow2::open_path`] or
    /// [`Qcow2::open_with_backing`].
    pub fn open(store: Arc<dyn Storage>, opts: &OpenOptions) -> Result<Qcow2> {
        Self::open_with_backing(store, None, opts)
    }

    /// Open an image on a store with an explicit backing image.
    pub fn open_with_backing(
        store: Arc<dyn Storage>,
        backing: Option<Arc<dyn GuestRead>>,
        opts: &OpenOptions,
    ) -> Result<Qcow2> {
        let header = read_header(store.as_ref(), opts)?;
        if let Some(name) = &header.backing_file {
            if backing.is_none() && opts.backing == BackingPolicy::Refuse {
                return Err(FormatError::Unsupported(format!(
                    "the image names a backing file '{name}', which this caller does not allow opening"
                )));
            }
        }
        Self::open_parsed(store, header, None, backing, opts)
    }

    pub(super) fn open_parsed(
        store: Arc<dyn Storage>,
        mut header: Header,
        data_file: Option<Arc<dyn Storage>>,
        backing: Option<Arc<dyn GuestRead>>,
        opts: &OpenOptions,
    ) -> Result<Qcow2> {
        let read_only = opts.read_only || store.is_read_only();
        let file_len = store.len()?;
        let cs = header.cluster_size();
        let p = Params {
            cluster_bits: header.cluster_bits,
            cs,
            l2_entries: header.l2_entries(),
            extended: header.extended_l2(),
            refcount_order: header.refcount_order,
            rb_entries: refcount::entries_per_block(header.cluster_bits, header.refcount_order),
            compression_type: header.compression_type,
            has_data_file: header.incompatible_features & INCOMPAT_DATA_FILE != 0,
            version: header.version,
            names_backing: header.backing_file.is_some(),
        };
        if !opts.check_mode && !read_only {
            if header.incompatible_features & INCOMPAT_CORRUPT != 0 {
                return Err(invalid!(
                    "qcow2: Image is corrupt; cannot be opened read/write"
                ));
            }
            if header.incompatible_features & INCOMPAT_DIRTY != 0 {
                return Err(invalid!(
                    "the image's dirty bit is set (lazy refcounts were in use); run 'zcow-img check -r all' before opening it read/write"
                ));
            }
        }
        let l1 = read_u64_table(
            store.as_ref(),
            header.l1_table_offset,
            header.l1_size as u64,
            "Active L1 table",
        )?;
        let rt_entries = header.refcount_table_clusters as u64 * cs / 8;
        let reftable = if rt_entries == 0 {
            Vec::new()
        } else {
            read_u64_table(
                store.as_ref(),
                header.refcount_table_offset,
                rt_entries,
                "Reference count table",
            )?
        };
        let (snapshots, snapshot_table_len) = if header.nb_snapshots > 0 {
            match read_table(store.as_ref(), header.snapshots_offset, header.nb_snapshots) {
                Ok(t) => t,
                Err(e) if opts.check_mode => {
                    let _ = e;
                    (Vec::new(), 0)
                }
                Err(e) => return Err(e),
            }
        } else {
            (Vec::new(), 0)
        };
        let zoned = Self::load_zoned(store.as_ref(), &header, file_len, &snapshots)?;
        // Overlapping metadata is refused before any other problem of the
        // zoned metadata: it is the more basic lie. An array whose size
        // disagrees with its zone count is left to the extension's
        // validation (its extent means nothing).
        let wp_array = header
            .zoned()
            .filter(|z| z.zonedmeta_size == 8 * z.nr_zones as u64);
        let (overlap, first_overlap) = MetadataMap::build(&ImageRegions {
            header: &header,
            l1: &l1,
            reftable: &reftable,
            snapshots: &snapshots,
            snapshot_table_len,
            wp_array,
        });
        let overlap_warning = first_overlap.map(|o| format!("metadata overlap: {o}"));
        if let Some(w) = &overlap_warning {
            if !read_only {
                return Err(FormatError::Corrupt(format!(
                    "{w}; the image cannot be opened read/write (run 'zcow-img check')"
                )));
            }
        }
        if let Some(z) = &zoned {
            if !read_only && !opts.check_mode {
                if let Some(problem) = &z.problem {
                    return Err(invalid!(
                        "zoned image cannot be opened read/write: {problem}; run 'zcow-img repair'"
                    ));
                }
            }
        }
        if header.incompatible_features & INCOMPAT_ZONED != 0 && zoned.is_none() && !opts.check_mode
        {
            return Err(invalid!(
                "incompatible feature bit 5 (zoned format) is set but the zoned header extension is missing"
            ));
        }
        if header.incompatible_features & INCOMPAT_ZONED == 0 && zoned.is_some() && !opts.check_mode
        {
            return Err(invalid!(
                "the zoned header extension is present but incompatible feature bit 5 (zoned format) is clear"
            ));
        }
        let alloc_end = file_len.div_ceil(cs);
        let data = data_file.unwrap_or_else(|| store.clone());
        let img = Qcow2 {
            store,
            data,
            backing,
            p,
            meta: Mutex::new(Meta {
                header: header.clone(),
                l1,
                l1_dirty: BTreeSet::new(),
                reftable,
                l2: TableCache::new(opts.l2_cache_tables),
                rb: TableCache::new(opts.refblock_cache_tables),
                free_hint: 0,
                alloc_end,
                file_len,
                pending_decrements: Vec::new(),
                reuse_pool: Default::default(),
                reuse_pool_clusters: 0,
                reuse_pool_limit: super::allocation::REUSE_POOL_BYTES,
                pages_lent: false,
                compressed_tail: None,
                overlap,
                corrupt: false,
            }),
            read_only,
            zoned,
            snapshots,
            path: None,
            backing_chain: Vec::new(),
            unlocked_io: AtomicUsize::new(0),
            size: AtomicU64::new(header.size),
            direct: None,
            overlap_warning,
        };
        // A read-write open clears autoclear bits zcow does not maintain
        // (bitmaps are not updated by zcow's writes, so they become invalid).
        if !read_only && !opts.check_mode && header.version >= 3 {
            let keep = header.autoclear_features & AUTOCLEAR_DATA_FILE_RAW;
            if header.autoclear_features != keep {
                img.guard(
                    &mut lock(&img.meta),
                    Some(Kind::Header),
                    field::AUTOCLEAR,
                    8,
                )?;
                img.store.write_at(field::AUTOCLEAR, &keep.to_be_bytes())?;
                img.store.sync()?;
                header.autoclear_features = keep;
                lock(&img.meta).header.autoclear_features = keep;
            }
        }
        Ok(img)
    }

    pub(super) fn load_zoned(
        store: &dyn Storage,
        header: &Header,
        file_len: u64,
        snapshots: &[Snapshot],
    ) -> Result<Option<ZonedInfo>> {
        let Some(ext) = header.zoned() else {
            return Ok(None);
        };
        let geometry = ext.geometry(header.size);
        let mut problem = ext
            .validate(header.size, header.cluster_size(), file_len)
            .err()
            .map(|e| e.to_string());
        if problem.is_none() {
            let forbidden = [
                (header.backing_file.is_some(), "a backing file"),
                (header.data_file().is_some(), "an external data file"),
                (!snapshots.is_empty(), "internal snapshots"),
                (header.extended_l2(), "extended L2 entries"),
                (header.crypt_method != 0, "encryption"),
                (header.version < 3, "qcow2 version 2"),
            ];
            if let Some((_, what)) = forbidden.iter().find(|(c, _)| *c) {
                problem = Some(format!("zoned images cannot have {what}"));
            }
        }
        let mut order = None;
        if problem.is_none() {
            // Paged, never read whole: constant memory for any zone count.
            let scan = crate::format::zoned::scan_wp_array(&geometry, |at, buf| {
                store.read_at(ext.zonedmeta_offset + at, buf)
            })?;
            order = scan.order;
            match scan.order {
                None => {
                    let (i, why) = scan.first_bad.unwrap_or((0, "invalid".into()));
                    problem = Some(format!("write-pointer entry of zone {i}: {why}"));
                }
                Some(WpByteOrder::LittleEndian) => {
                    problem = Some(
                        "the write-pointer array is little-endian (written by an old QEMU patch version)"
                            .into(),
                    )
                }
                Some(WpByteOrder::BigEndian) => {}
            }
        }
        Ok(Some(ZonedInfo {
            ext: ext.clone(),
            geometry,
            order,
            problem,
        }))
    }
}
