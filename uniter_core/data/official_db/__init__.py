"""The official UNITER LMDB databases (ChenRocks/UNITER data/data.py): read them, write them, convert them.

Users who own the official feature and text DBs should be able to train on them unchanged, so the readers follow
the official on-disk format byte for byte:

Image DB folder (one per image split, e.g. img_db/coco_train2014/):
    feat_th{conf_th}_max{max_bb}_min{min_bb}[_compressed]/  LMDB whose rows are already cut to nbb, with
    nbb_th{conf_th}_max{max_bb}_min{min_bb}.json           {img_fname: nbb} beside it;
    all[_compressed]/                                      LMDB with every box, used when that JSON is absent
                                                           (nbb = clip(#(conf > conf_th), min_bb, max_bb));
    feat_numbb{num_bb}[_compressed]/                       fixed number of boxes (conf_th = -1).
  Key: image file name (utf-8); value: msgpack + msgpack_numpy dict, or np.savez_compressed bytes when
  compressed; fields features [n, 2048], norm_bb [n, 6], conf [n], soft_labels [n, 1601], fp16.
  Key b"__keys__": JSON list of all image file names.
Text DB folder: LMDB in the folder itself, key = text id, value = lz4.frame(msgpack(record)); records carry
  input_ids (no [CLS]/[SEP]) and img_fname; id2len.json, txt2img.json, img2txts.json and meta.json (CLS, SEP,
  MASK, UNK, v_range, tokenizer) beside it.

Convert a pair into the corpus-folder layout of build_corpus (img_db feature store + txt_db/<name>.jsonl):
    python -m uniter_core.data.official_db --img-db DIR [DIR ...] --txt-db DIR [DIR ...] --out DIR
"""
from .convert import ConversionSettings, convert, main, parse_args
from .format import (CAPTION_FIELDS, KEYS, MissingLmdbError, OfficialDBError, _pack, compute_num_bb,
                     decode_image_dump, encode_image_dump, image_db_name, nbb_file_name)
from .reader import OfficialImageDB, OfficialTextDB, open_image_db
from .writer import official_text_meta, write_official_image_db, write_official_text_db

__all__ = ["CAPTION_FIELDS", "KEYS", "MissingLmdbError", "OfficialDBError", "OfficialImageDB", "OfficialTextDB",
           "ConversionSettings", "compute_num_bb", "convert", "decode_image_dump", "encode_image_dump",
           "image_db_name", "main", "nbb_file_name", "official_text_meta", "open_image_db", "parse_args",
           "write_official_image_db", "write_official_text_db"]
