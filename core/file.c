/*
** file.c -- files that hold secrets, written as the tools that own them
** write them: whole (a new file renamed over the old one, so that a reader
** sees one or the other, never half) and readable by their owner only
** (mode 0600, as botocore's JSONFileCache writes the AWS CLI's SSO token
** cache, which provider/aws_credentials.lua renews).
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tide.h"

/// core.write_private(path, bytes) -> true | nil, err (FileError): writes
/// bytes to a new file beside path, mode 0600, and renames it over path.
static int l_write_private(lua_State *L) {
  size_t plen, n;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *data = luaL_checklstring(L, 2, &n);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, path, plen);
  luaL_addstring(&b, ".tideXXXXXX");
  luaL_pushresult(&b);
  char *tmp = strdup(lua_tostring(L, -1));
  lua_pop(L, 1);
  if (tmp == NULL) return luaL_error(L, "not enough memory");
  int fd = mkstemp(tmp); /* (mkstemp's file is the owner's only: 0600) */
  int err = fd < 0 ? errno : 0;
  for (size_t off = 0; !err && off < n;) {
    ssize_t w = write(fd, data + off, n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) err = errno;
    else off += (size_t)w;
  }
  if (fd >= 0 && !err && fchmod(fd, S_IRUSR | S_IWUSR) != 0) err = errno;
  if (fd >= 0 && close(fd) != 0 && !err) err = errno;
  if (!err && rename(tmp, path) != 0) err = errno;
  if (err && fd >= 0) unlink(tmp);
  free(tmp);
  if (err) {
    lua_pushnil(L);
    tide__push_error(L, "FileError", "cannot write %s: %s", path, strerror(err));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

void tide__open_file(lua_State *L) {
  lua_pushcfunction(L, l_write_private);
  lua_setfield(L, -2, "write_private");
}
